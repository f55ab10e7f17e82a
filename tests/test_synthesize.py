"""New nodules from learnt mixtures: parameter-space math, resolution-free rendering, `gmmkit synthesize`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import signalled

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from gmmkit import synthesis  # noqa: E402
from gmmkit.cli import main  # noqa: E402
from gmmkit.synthesis import Mixtures, from_vector, perturb, sample, to_vector  # noqa: E402


def random_mixtures(n=5, k=4, seed=0, sigma=(0.15, 0.35)) -> Mixtures:
    rng = np.random.default_rng(seed)
    alpha = rng.dirichlet(np.ones(k), size=n)
    mu = rng.uniform(-0.4, 0.4, (n, k, 3))
    tril = np.zeros((n, k, 3, 3))
    idx = np.tril_indices(3, -1)
    tril[..., idx[0], idx[1]] = rng.normal(0, 0.05, (n, k, 3))
    for d in range(3):
        tril[..., d, d] = rng.uniform(*sigma, (n, k))
    return Mixtures(alpha, mu, tril, rng.uniform(0.5, 2.0, n))


def assert_valid(m: Mixtures):
    np.testing.assert_allclose(m.alpha.sum(axis=1), 1.0, rtol=1e-9)
    assert np.all(m.alpha > 0) and np.all(np.abs(m.mu) < 1) and np.all(m.mass > 0)
    assert np.all(np.diagonal(m.tril, axis1=-2, axis2=-1) > 0)
    assert np.all(np.triu(m.tril, 1) == 0)
    np.linalg.cholesky(m.tril @ np.swapaxes(m.tril, -1, -2))  # positive definite, or LinAlgError


# --- parameter space -----------------------------------------------------------------------------


def test_vector_round_trip():
    m = random_mixtures()
    back = from_vector(to_vector(m), m.components)
    for name, value in m.arrays().items():
        np.testing.assert_allclose(getattr(back, name), value, rtol=1e-9, atol=1e-12, err_msg=name)


def test_any_vector_is_a_valid_mixture():
    rng = np.random.default_rng(1)
    assert_valid(from_vector(rng.normal(0, 3, (50, 10 * 6 + 1)), 6))


def test_perturb_keeps_mixtures_valid_and_takes_every_source():
    m = random_mixtures(n=4)
    g = perturb(m, 10, np.random.default_rng(0), mean_jitter=0.5, sigma_jitter=0.5, concentration=5)
    assert_valid(g.mixtures)
    assert len(g.mixtures) == 10 and sorted(g.source[:8]) == [0, 0, 1, 1, 2, 2, 3, 3]
    same = perturb(m, 4, np.random.default_rng(0), mean_jitter=0, sigma_jitter=0, concentration=np.inf, mass_jitter=0)
    for name, value in m.take(same.source).arrays().items():
        np.testing.assert_allclose(getattr(same.mixtures, name), value, err_msg=name)


def test_perturb_scales_covariances_keeping_correlations():
    m = random_mixtures(n=1, k=3)
    g = perturb(m, 1, np.random.default_rng(3), mean_jitter=0, sigma_jitter=0.3, concentration=np.inf, mass_jitter=0)

    def correlation(tril):
        cov = tril @ np.swapaxes(tril, -1, -2)
        sd = np.sqrt(np.diagonal(cov, axis1=-2, axis2=-1))
        return cov / sd[..., :, None] / sd[..., None, :]

    np.testing.assert_allclose(correlation(g.mixtures.tril), correlation(m.tril), atol=1e-12)
    assert not np.allclose(g.mixtures.tril, m.tril)


def test_sample_draws_from_each_group():
    m = random_mixtures(n=12)
    labels = np.repeat([0, 1, 2], 4)
    cold = sample(m, 30, np.random.default_rng(0), groups=labels, temperature=0.0)
    assert_valid(cold.mixtures)
    x = to_vector(m)
    for label in range(3):  # temperature 0: every draw is its group's mean
        drawn = to_vector(cold.mixtures)[cold.group == label]
        np.testing.assert_allclose(
            drawn, np.repeat(x[labels == label].mean(0, keepdims=True), len(drawn), 0), atol=1e-9
        )
        assert np.all(labels[cold.source[cold.group == label]] == label)
    warm = sample(m, 20, np.random.default_rng(1), groups=2)
    assert_valid(warm.mixtures) and set(warm.group) <= {0, 1}
    with pytest.raises(ValueError, match="groups"):
        sample(m, 2, np.random.default_rng(0), groups=13)


# --- rendering -----------------------------------------------------------------------------------


def test_rendering_does_not_depend_on_the_grid():
    """Density per unit volume of [-1, 1]^3: the same point has the same value at any size, and the integral
    over the cube is the same."""
    m = random_mixtures(n=3, k=4, sigma=(0.2, 0.3))
    v16, v48, v64 = (synthesis.render(m, s) for s in (16, 48, 64))
    # voxel centres (2i + 1) / 16 - 1 of the 16-grid are centres 3i + 1 of the 48-grid
    np.testing.assert_allclose(v48[:, 1::3, 1::3, 1::3], v16, rtol=1e-4, atol=1e-6 * v16.max())
    integrals = [v.sum(axis=(1, 2, 3)) * (2.0 / v.shape[1]) ** 3 for v in (v16, v48, v64)]
    np.testing.assert_allclose(integrals[0], integrals[2], rtol=0.01)
    np.testing.assert_allclose(integrals[1], integrals[2], rtol=0.002)
    assert np.all(integrals[2] < m.mass) and np.all(integrals[2] > 0.8 * m.mass)  # a little beyond the cube
    slices = synthesis.central_slices(v64)  # z = 0: between the two middle slices
    np.testing.assert_allclose(slices, 0.5 * (v64[:, 31] + v64[:, 32]))


# --- a trained run -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from gmmkit import RunConfig
    from gmmkit.training import train

    root = tmp_path_factory.mktemp("synth")  # conftest gives the phantoms a private cache
    cfg = RunConfig().replace(
        data={"dataset": "phantoms", "size": 24, "val_size": 8, "train_size": 16},
        model={"components": 4, "filters": 8, "latent": 32},
        train={"epochs": 1, "target_loss": None, "batch_size": 8, "threads": 1},
        out=str(root / "run"),
    )
    assert train(cfg)["status"] == "max_epochs"
    return root / "run"


def test_the_model_renders_what_its_parameters_say(run_dir):
    from gmmkit.data import load_split
    from gmmkit.training import RunDir

    run = RunDir.open(run_dir)
    cfg, (model, _) = run.config(), run.load_model()
    cubes = load_split(cfg.data).val
    rendered = synthesis.render(synthesis.encode(model, cubes), cfg.data.cube)
    np.testing.assert_allclose(rendered, model.predict(cubes, verbose=0), rtol=1e-4, atol=1e-5)


def test_synthesize_writes_images_of_the_right_size_and_spacing(run_dir, tmp_path, capsys):
    pytest.importorskip("SimpleITK")
    from gmmkit.data.images import read_image

    out = tmp_path / "new"
    assert (
        main(
            [
                "synthesize",
                "--run",
                str(run_dir),
                "--out",
                str(out),
                "--n",
                "5",
                "--size",
                "32",
                "--hu",
                "--seed",
                "7",
                "--no-progress",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["size"] == 32 and manifest["spacing_mm"] == 0.5 and len(manifest["files"]) == 5
    for record in manifest["files"]:
        scan = read_image(out / record["file"])
        assert scan.volume.shape == (32, 32, 32) and scan.volume.dtype == np.float32
        np.testing.assert_allclose(scan.geometry.spacing, 0.5)
        np.testing.assert_allclose(scan.geometry.origin, -7.75)  # centred on the world origin
        hu = read_image(out / record["file_hu"]).volume
        assert hu.dtype == np.int16 and hu.min() >= -1000 and hu.max() <= 400
    with np.load(out / "mixtures.npz", allow_pickle=False) as f:
        assert f["alpha"].shape == (5, 4) and f["tril"].shape == (5, 4, 3, 3) and f["source"].max() < 8
    html = (out / "gallery.html").read_text(encoding="utf-8")
    assert "plotly" in html and "<script" in html
    assert (out / "manifest.csv").read_text().splitlines()[0].startswith("index,file,file_hu,source")
    assert "wrote 5 nodules of 32^3 at 0.5 mm" in capsys.readouterr().out


def test_synthesize_from_cubes_npz_keeps_their_spacing(run_dir, tmp_path):
    pytest.importorskip("SimpleITK")
    from gmmkit.data import load_phantoms
    from gmmkit.data.cubes import CubeSet
    from gmmkit.data.images import read_image

    cubes = load_phantoms(6, seed=1).cubes
    source = tmp_path / "cubes.npz"
    CubeSet(
        cubes, np.array([f"scan{i}" for i in range(6)]), np.zeros((6, 3)), np.full(6, 5.0), np.ones(6), spacing_mm=0.8
    ).save(source)
    out = tmp_path / "sampled"
    assert (
        main(
            [
                "synthesize",
                "--run",
                str(run_dir),
                "--out",
                str(out),
                "--n",
                "4",
                "--method",
                "sample",
                "--groups",
                "2",
                "--format",
                "mhd",
                "--from",
                str(source),
                "--gallery",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    scan = read_image(out / "nodule_0003.mhd")
    assert scan.volume.shape == (16, 16, 16)
    np.testing.assert_allclose(scan.geometry.spacing, 0.8)
    records = json.loads((out / "manifest.json").read_text())["files"]
    assert all(r["source_seriesuid"].startswith("scan") for r in records)
    assert not (out / "gallery.html").exists()


@pytest.mark.parametrize(
    "setup,args,named",
    [
        ("empty", [], "not a gmmkit run directory"),
        ("no checkpoint", [], "no checkpoint.npz"),
        ("run", ["--method", "sample", "--groups", "99"], "--groups"),
        ("run", ["--n", "0"], "--n"),
        ("run", ["--from", "missing.npz"], "missing.npz: no such file"),
    ],
)
def test_synthesize_errors_are_one_line(run_dir, tmp_path, capsys, setup, args, named):
    target = run_dir
    if setup != "run":
        target = tmp_path / "r"
        target.mkdir()
        if setup == "no checkpoint":
            (target / "config.json").write_text((run_dir / "config.json").read_text())
    code = main(
        [
            "synthesize",
            "--run",
            str(target),
            "--out",
            str(tmp_path / "o"),
            "--n",
            "2",
            "--no-progress",
            *[a if a != "missing.npz" else str(tmp_path / a) for a in args],
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and named in err[0], err
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_a_signal_while_nodules_are_written_leaves_nothing(run_dir, tmp_path):
    """SIGTERM left a 70 MB staging folder beside --out: the command ends in one line, with nothing written."""
    staged = lambda: list(tmp_path.glob(".out.*.tmp/nodule_0002.nii.gz"))  # noqa: E731
    ended = signalled(
        ["synthesize", "--run", run_dir, "--out", tmp_path / "out", "--n", "400", "--size", "48", "--no-progress"],
        lambda proc, _: bool(staged()),  # it has written three nodules into its staging folder
    )
    assert ended.code == 1, ended.stderr
    assert ended.stderr.strip().splitlines() == ["gmmkit synthesize: stopped by SIGTERM; nothing was written"]
    assert list(tmp_path.iterdir()) == [] and not ended.left
    print(f"synthesize, SIGTERM while writing: ended {ended.seconds:.2f} s after it")


# One synthesis in a process of its own, which prints what it held at its peak: ``python -c MEASURED ARGS``
MEASURED = (
    "import resource, sys\n"
    "from gmmkit import machine\n"
    "from gmmkit.cli import main\n"
    "before = machine.resident_memory()\n"
    "code = main(sys.argv[1:])\n"
    "print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n"
    "sys.exit(code)\n"
)


def test_the_memory_check_covers_the_peak_a_synthesis_takes(run_dir, tmp_path, monkeypatch, capsys):
    """The check estimated 1.7 GB for --size 512, which peaked at 8.9 GB: a machine with less memory available
    than a synthesis takes (measured here, in a process of its own) refuses its size before any work."""
    from gmmkit import machine
    from gmmkit.synthesis.export import peak_memory

    args = ["synthesize", "--run", str(run_dir), "--n", "2", "--size", "160", "--hu", "--gallery", "0", "--no-progress"]
    proc = subprocess.run(
        [sys.executable, "-c", MEASURED, *args, "--out", str(tmp_path / "measured")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    before, peak = map(int, proc.stdout.split()[-2:])
    assert peak_memory(160, 4, 2) >= peak  # the estimate covers the measured peak
    # this process, as a fresh one would (TensorFlow not loaded), on a machine short of what it took
    monkeypatch.setattr(machine, "resident_memory", lambda: before)
    monkeypatch.setattr(machine, "available_memory", lambda: peak - before - (32 << 20))
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--size (synthesis.size)" in err and "GiB" in err and not (tmp_path / "refused").exists(), err
    print(
        f"synthesize --size 160 --n 2 --hu: peak {peak / 2**30:.2f} GiB, estimated {peak_memory(160, 4, 2) / 2**30:.2f}"
    )
