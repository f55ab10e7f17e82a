"""Bad input on the command line: one line naming the flag, field or file, exit status 2, nothing written."""

import subprocess
import sys

import numpy as np
import pytest

from gmmkit.cli import COMMANDS, build_parser, main

# One bad value per flag of every subcommand: (argv, the flag its one-line error must name). In the working
# folder, `file` is a file where a folder would have to be created, `a.csv` an annotations file and `run`
# a run directory (config.json only). The flags of add_run_flags are checked under each command using them.
RUN_FLAGS = [
    ("--dataset", "cubes.csv"),
    ("--dataset", "missing.npz"),
    ("--phantoms", "0"),
    ("--train-size", "0"),
    ("--val-size", "0"),
    ("--cube", "8"),
    ("--min-readers", "5"),
    ("--max-slice-thickness", "0"),
    ("--min-diameter", "-1"),
    ("--components", "0"),
    ("--batch-size", "0"),
    ("--lr", "-1"),
    ("--lr", "1e308"),  # beyond float32
    ("--epochs", "0"),
    ("--target-loss", "-1"),
    ("--target-loss", "abc"),
    ("--warmup-epochs", "-1"),
    ("--seed", "-1"),
    ("--threads", "0"),
    ("--out", "file/run"),
    ("--out", "file"),
    ("--config", "missing.json"),
    ("--micro-shards", "5"),
    ("--micro-shards", "4"),  # without --exact
    ("--checkpoint-every", "0"),
    ("--checkpoint-every", "-5s"),
    ("--checkpoint-every", "ten"),
]
LUNA = ["prepare-luna", "--scans", ".", "--annotations", "a.csv"]
SYNTH = ["synthesize", "--run", "run", "--out", "new"]
LIDC = ["prepare-lidc", "--out", "lidc.npz"]
BAD_FLAGS = [
    *[([command, flag, value], flag) for command in ("train", "sweep", "lr-find") for flag, value in RUN_FLAGS],
    # fewer training cubes than one batch: refused before the run starts (on the phantoms: without --dataset, the
    # default LIDC-shaped set was built first, 50 s, while --phantoms went unused)
    (
        [
            "train",
            "--dataset",
            "phantoms",
            "--phantoms",
            "40",
            "--val-size",
            "8",
            "--train-size",
            "4",
            "--batch-size",
            "8",
            "--components",
            "2",
            "--threads",
            "1",
        ],
        "--train-size",
    ),
    (["frobnicate"], "COMMAND"),
    (["train", "--workers", "64"], "--workers"),
    (["train", "--exact", "--micro-shards", "4", "--workers", "8"], "--workers"),
    (["train", "--workers", "0"], "--workers"),
    (["train", "--strategy", "fast"], "--strategy"),
    (["train", "--launcher", "srun"], "--launcher"),
    (["train", "--backend", "nccl"], "--backend"),
    (["sweep", "--backend", "gloo"], "--backend"),
    (["demo", "--backend", "nccl"], "--backend"),
    (["reproduce", "--out", "r", "--backend", "nccl"], "--backend"),
    (["bench", "--backend", "nccl"], "--backend"),
    (["sweep", "--workers", "2,4"], "--workers"),
    (["sweep", "--workers", "1,two"], "--workers"),
    (["sweep", "--strategies", "strong,fast"], "--strategies"),
    (["sweep", "--max-real", "0"], "--max-real"),
    (["sweep", "--target-epoch", "0"], "--target-epoch"),
    (["lr-find", "--lr-min", "0"], "--lr-min"),
    (["lr-find", "--lr-max", "inf"], "--lr-max"),
    (["lr-find", "--steps", "1"], "--steps"),
    (["demo", "--out", "file/demo"], "--out"),
    (["demo", "--target-epoch", "0"], "--target-epoch"),
    (["demo", "--epochs", "0"], "--epochs"),
    (["reproduce", "--out", "file/r"], "--out"),
    (["reproduce", "--out", "r", "--scale", "huge"], "--scale"),
    (["reproduce", "--out", "r", "--target-epoch", "0"], "--target-epoch"),
    (["reproduce", "--out", "r", "--max-real", "0"], "--max-real"),
    (["reproduce", "--out", "r", "--lr", "papers"], "--lr"),
    (["reproduce", "--out", "r", "--lr", "-0.001"], "--lr"),
    (["reproduce", "--out", "r", "--checkpoint-every", "0s"], "--checkpoint-every"),
    (["stop", "nowhere"], "RUN_DIR"),
    (["prepare-luna", "--scans", "nowhere", "--annotations", "a.csv", "--out", "cubes.npz"], "--scans"),
    (["prepare-luna", "--dicom", "a.csv", "--annotations", "a.csv", "--out", "cubes.npz"], "--dicom"),
    (["prepare-luna", "--scans", ".", "--dicom", ".", "--annotations", "a.csv", "--out", "cubes.npz"], "--dicom"),
    (["prepare-luna", "--scans", ".", "--annotations", "missing.csv", "--out", "cubes.npz"], "--annotations"),
    ([*LUNA, "--out", "cubes.txt"], "--out"),
    ([*LUNA, "--out", "file/cubes.npz"], "--out"),
    ([*LUNA, "--out", "cubes.npz", "--cube", "8"], "--cube"),
    ([*LUNA, "--out", "cubes.npz", "--spacing", "0"], "--spacing"),
    ([*LUNA, "--out", "cubes.npz", "--spacing", "inf"], "--spacing"),
    ([*LUNA, "--out", "cubes.npz", "--jobs", "0"], "--jobs"),
    (["prepare-lidc", "--out", "lidc.txt"], "--out"),
    (["prepare-lidc", "--out", "file/lidc.npz"], "--out"),
    ([*LIDC, "--min-readers", "0"], "--min-readers"),
    ([*LIDC, "--max-slice-thickness", "0"], "--max-slice-thickness"),
    ([*LIDC, "--min-diameter", "-1"], "--min-diameter"),
    ([*LIDC, "--cube", "8"], "--cube"),
    ([*LIDC, "--spacing", "inf"], "--spacing"),
    ([*LIDC, "--jobs", "0"], "--jobs"),
    ([*LIDC, "--database", "missing.sqlite"], "--database"),
    (["synthesize", "--run", "nowhere", "--out", "new"], "--run"),
    (["synthesize", "--run", "run", "--out", "file/new"], "--out"),
    ([*SYNTH, "--n", "0"], "--n"),
    ([*SYNTH, "--size", "0"], "--size"),
    ([*SYNTH, "--method", "dream"], "--method"),
    ([*SYNTH, "--format", "png"], "--format"),
    ([*SYNTH, "--seed", "-1"], "--seed"),
    ([*SYNTH, "--from", "missing.npz"], "--from"),
    ([*SYNTH, "--spacing", "inf"], "--spacing"),
    ([*SYNTH, "--gallery", "-1"], "--gallery"),
    ([*SYNTH, "--mean-jitter", "-1"], "--mean-jitter"),
    ([*SYNTH, "--sigma-jitter", "nan"], "--sigma-jitter"),
    ([*SYNTH, "--concentration", "inf"], "--concentration"),
    ([*SYNTH, "--method", "sample", "--groups", "0"], "--groups"),
    ([*SYNTH, "--method", "sample", "--temperature", "-1"], "--temperature"),
    *[([command, "--hosts", "a:0"], "--hosts") for command in ("train", "sweep", "demo", "bench")],
    *[([command, "--hostfile", "missing.txt"], "--hostfile") for command in ("train", "sweep", "demo", "bench")],
    (["reproduce", "--out", "r", "--hosts", "a:0"], "--hosts"),
    (["reproduce", "--out", "r", "--hostfile", "missing.txt"], "--hostfile"),
    (["reproduce", "--out", "r", "--hosts", "a:1,b:1", "--max-real", "3"], "--max-real"),
    (["train", "--workers", "2", "--hostfile", "file"], "--hostfile"),  # "in the way": file, line 1, not HOST slots=N
    (["train", "--workers", "3", "--hosts", "a:1,b:1"], "--workers"),  # more ranks than slots
    (["train", "--workers", "2", "--hosts", "a:1", "--hostfile", "file"], "--hostfile"),  # one or the other
    (["sweep", "--hosts", "a:1,b:1", "--max-real", "3"], "--max-real"),
    (["bench", "--hosts", "a:2"], "--hosts"),  # across hosts needs two of them
    # a host whose name does not resolve: one line before anything starts (mpirun printed a page, rc 255)
    (["train", "--workers", "2", "--hosts", "no-such-host.invalid:2"], "--hosts"),
    (["train", "--workers", "2", "--hostfile", "hosts.txt"], "--hostfile"),
    (["sweep", "--workers", "1,2", "--max-real", "2", "--hostfile", "hosts.txt"], "--hostfile"),
    (["reproduce", "--out", "r", "--hostfile", "hosts.txt"], "--hostfile"),
    (["train", "--elastic", "--strategy", "weak"], "--elastic"),  # its global batch grows with the workers
    (["train", "--elastic", "--simulate", "--workers", "2"], "--elastic"),
    (["train", "--min-workers", "0"], "--min-workers"),
    (["train", "--min-workers", "3", "--workers", "2"], "--min-workers"),
    (["train", "--max-restarts", "-1"], "--max-restarts"),
    (["bench", "--json", "out.txt"], "--json"),
    (["bench", "--json", "file/bench.json"], "--json"),
    (["bench", "--plot", "growth.png"], "--plot"),
    (["bench", "--plot", "file/growth.html"], "--plot"),
]

# Flags that have no bad value: on/off switches, --help and --version. A flag added later must get a row
# in BAD_FLAGS or an entry here (test_every_flag_has_a_bad_value_test).
NO_BAD_VALUE = {
    ("gmmkit", "--help"),
    ("gmmkit", "--version"),
    *((command, "--help") for command in COMMANDS),
    ("train", "--simulate"),
    ("train", "--resume"),
    ("train", "--exact"),
    ("sweep", "--exact"),
    ("lr-find", "--exact"),
    ("demo", "--no-exact"),
    ("reproduce", "--no-exact"),
    ("train", "--overwrite"),
    ("sweep", "--simulate"),
    ("sweep", "--no-calibrate"),
    ("sweep", "--overwrite"),
    ("demo", "--overwrite"),
    ("reproduce", "--overwrite"),
    ("reproduce", "--no-progress"),
    ("synthesize", "--overwrite"),
    ("prepare-luna", "--no-progress"),
    ("prepare-lidc", "--no-progress"),
    ("synthesize", "--hu"),
    ("synthesize", "--no-progress"),
    ("bench", "--quick"),
}


def _files(root):
    return {p.relative_to(root): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


@pytest.mark.parametrize("argv,named", BAD_FLAGS, ids=[" ".join(argv) for argv, _ in BAD_FLAGS])
def test_bad_flags_name_the_flag_and_exit_2(argv, named, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("in the way\n")
    (tmp_path / "a.csv").write_text("seriesuid,coordX,coordY,coordZ\n1.2.3,0,0,0\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    (tmp_path / "hosts.txt").write_text("no-such-host.invalid slots=2\n")
    before = _files(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own checks: numbers, choices, required and exclusive flags
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and named in err, err
    assert _files(tmp_path) == before  # nothing written


def _flags(parser):
    """(command, flag) for every option of gmmkit and of each subcommand; a positional by its metavar."""
    found = {("gmmkit", a.option_strings[-1] if a.option_strings else a.metavar) for a in parser._actions}
    for command, sub in parser._subparsers._group_actions[0].choices.items():
        found |= {(command, a.option_strings[-1] if a.option_strings else a.metavar) for a in sub._actions}
    return found


def test_the_parser_imports_no_heavy_library():
    """`gmmkit --help` and every flag error answer at once: building the parser (every subcommand) imports
    none of TensorFlow, Horovod, plotly, ipyparallel or SimpleITK (it imported TensorFlow, 7 s, through
    gmmkit reproduce's module)."""
    heavy = ("tensorflow", "horovod", "plotly", "ipyparallel", "SimpleITK", "keras")
    code = (
        "import sys; from gmmkit.cli import build_parser; build_parser(); "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_every_flag_has_a_bad_value_test():
    flags = _flags(build_parser())
    tested = {(argv[0] if argv[0] in COMMANDS else "gmmkit", named) for argv, named in BAD_FLAGS}
    assert flags - tested - NO_BAD_VALUE == set(), "flags with neither a row in BAD_FLAGS nor one in NO_BAD_VALUE"
    assert (tested | NO_BAD_VALUE) - flags == set(), "rows for flags that do not exist"
    assert tested & NO_BAD_VALUE == set()


@pytest.mark.parametrize(
    "cubes,problem",
    [
        (np.full((4, 16, 16, 16), np.nan, np.float32), "non-finite"),
        (np.zeros((4, 16, 16), np.float32), "shape (N, S, S, S)"),
        (np.zeros((4, 8, 8, 8), np.float32), "receptive field"),
        (np.zeros((0, 16, 16, 16), np.float32), "holds no cubes"),
        (np.zeros((4, 16, 16, 16), np.complex64), "real numbers"),  # was cast to float32, its imaginary part lost
        (np.full((4, 16, 16, 16), -1000, np.int16), "Hounsfield units"),  # trained on raw HU, the run diverged
        (np.full((4, 16, 16, 16), 1.5, np.float32), "normalised to [0, 1]"),
    ],
)
def test_a_bad_dataset_names_the_file(cubes, problem, tmp_path, capsys):
    path = tmp_path / "cubes.npz"
    np.savez(path, cubes=cubes)
    assert main(["train", "--dataset", str(path), "--val-size", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "cubes.npz" in err and problem in err
    assert not (tmp_path / "run").exists()


def test_a_pickled_dataset_is_refused(tmp_path, capsys):
    path = tmp_path / "cubes.npz"
    np.savez(path, cubes=np.array([{"evil": 1}], dtype=object))
    assert main(["train", "--dataset", str(path), "--val-size", "1", "--out", str(tmp_path / "run")]) == 2
    assert "cubes.npz" in capsys.readouterr().err
