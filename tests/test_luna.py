"""Real CT: world geometry, cubes centred on their nodules, LUNA16/DICOM through `gmmkit prepare-luna`, errors."""

import os
import shutil

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sitk = pytest.importorskip("SimpleITK")

from gmmkit.cli import main  # noqa: E402
from gmmkit.data.cubes import CubeSet  # noqa: E402
from gmmkit.data.fake_luna import LUNG_HU, make_fake_luna  # noqa: E402
from gmmkit.data.geometry import Geometry, cut_cube, index_to_world, world_to_index  # noqa: E402
from gmmkit.data.intensity import normalize_hu  # noqa: E402
from gmmkit.data.luna import prepare_luna, read_annotations  # noqa: E402
from gmmkit.errors import DatasetError  # noqa: E402

LUNG = float(normalize_hu(LUNG_HU))


def _rotation(rng):
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _sitk_image(shape_zyx, geometry, values=None):
    image = sitk.GetImageFromArray(np.zeros(shape_zyx, np.int16) if values is None else values)
    image.SetOrigin(tuple(geometry.origin))
    image.SetSpacing(tuple(geometry.spacing))
    image.SetDirection(tuple(geometry.direction.reshape(-1)))
    return image


def intensity_centroid(cube, background):
    """Centroid (z, y, x) in voxels of the intensity above ``background``."""
    w = np.clip(cube - background, 0, None)
    grids = np.meshgrid(*(np.arange(n) for n in cube.shape), indexing="ij")
    return np.array([(g * w).sum() / w.sum() for g in grids])


# --- geometry against SimpleITK ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["identity", "flipped", "oblique"])
def test_world_to_index_matches_simpleitk(kind):
    rng = np.random.default_rng(1)
    direction = {"identity": np.eye(3), "flipped": np.diag([-1.0, 1.0, -1.0]), "oblique": _rotation(rng)}[kind]
    geometry = Geometry.of(origin=(-120.5, 33.0, -310.25), spacing=(0.7, 0.8, 2.5), direction=direction)
    image = _sitk_image((6, 7, 8), geometry)
    for point in rng.uniform(-200, 200, (5, 3)):
        expected = image.TransformPhysicalPointToContinuousIndex(tuple(point))
        np.testing.assert_allclose(world_to_index(point, geometry), expected, atol=1e-9)
        index = rng.uniform(-3, 9, 3)
        np.testing.assert_allclose(
            index_to_world(index, geometry), image.TransformContinuousIndexToPhysicalPoint(tuple(index)), atol=1e-9
        )


def test_cut_cube_is_simpleitk_resampling_on_a_world_grid():
    """One interpolation at each cube voxel's world position: what sitk.Resample does onto that grid."""
    rng = np.random.default_rng(2)
    geometry = Geometry.of(origin=(10.0, -20.0, 30.0), spacing=(0.75, 0.75, 2.0), direction=np.diag([-1.0, 1.0, -1.0]))
    volume = rng.integers(-1000, 400, (30, 40, 40)).astype(np.int16)
    centre = index_to_world(np.array([20.3, 19.6, 15.2]), geometry)
    cube, inside = cut_cube(volume, geometry, centre, size=12, spacing_mm=1.0)
    assert inside == 1.0
    reference = sitk.Resample(
        _sitk_image(volume.shape, geometry, volume),
        (12, 12, 12),
        sitk.Transform(),
        sitk.sitkLinear,
        tuple(centre - 5.5),
        (1.0, 1.0, 1.0),
        (1, 0, 0, 0, 1, 0, 0, 0, 1),
        -1000.0,
        sitk.sitkFloat32,
    )
    np.testing.assert_allclose(cube, sitk.GetArrayFromImage(reference), atol=1e-2)


def test_cut_cube_pads_with_air_beyond_the_border():
    geometry = Geometry.of(origin=(0, 0, 0), spacing=(1, 1, 1))
    volume = np.zeros((20, 20, 20), np.int16)
    cube, inside = cut_cube(volume, geometry, (0.0, 10.0, 10.0), size=16)  # x = 0: the first voxel's centre
    # x < -0.5 mm is outside: cube x columns 0..7 lie at x = -7.5 .. -0.5 (the last one on the edge, inside)
    assert np.all(cube[:, :, :7] == -1000.0) and np.all(cube[:, :, 7:] == 0.0)
    assert inside == pytest.approx(9 / 16)
    _, none_inside = cut_cube(volume, geometry, (-40.0, 10.0, 10.0), size=16)
    assert none_inside == 0.0


# --- prepare-luna on a fake LUNA16 folder --------------------------------------------------------


@pytest.fixture(scope="module")
def fake_luna(tmp_path_factory):
    return make_fake_luna(tmp_path_factory.mktemp("luna"), n_scans=3, nodules_per_scan=2, seed=3)


@pytest.fixture(scope="module")
def prepared(fake_luna, tmp_path_factory):
    """`gmmkit prepare-luna` with two worker processes: (exit code, stderr lines, out path)."""
    out = tmp_path_factory.mktemp("prepared") / "cubes.npz"
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(
            [
                "prepare-luna",
                "--scans",
                str(fake_luna.scans),
                "--annotations",
                str(fake_luna.annotations),
                "--out",
                str(out),
                "--jobs",
                "2",
                "--no-progress",
            ]
        )
    return code, err.getvalue().splitlines(), out


def test_fake_luna_covers_the_awkward_cases(fake_luna):
    cases = [t["case"] for t in fake_luna.truth]
    assert cases.count("border") == 1 and cases.count("outside") == 1 and cases.count("no scan") == 1
    images = [sitk.ReadImage(str(p)) for p in sorted(fake_luna.scans.rglob("*.mhd"))]
    assert {p.parent.name for p in fake_luna.scans.rglob("*.mhd")} == {"subset0", "subset1"}
    assert all(len(set(np.round(im.GetSpacing(), 6))) == 2 for im in images)  # anisotropic
    assert all(np.all(np.asarray(im.GetOrigin()) != 0) for im in images)
    assert any(np.any(np.diag(np.reshape(im.GetDirection(), (3, 3))) < 0) for im in images)  # flipped


def test_every_cube_is_centred_on_its_nodule(fake_luna, prepared):
    code, _, out = prepared
    assert code == 0
    data = CubeSet.load(out)
    kept = [t for t in fake_luna.truth if t["case"] in ("inside", "border")]
    assert len(data) == len(kept) == fake_luna.expected_cubes()
    assert [str(u) for u in data.seriesuid] == [t["seriesuid"] for t in kept]  # CSV order
    np.testing.assert_allclose(data.center_xyz_mm, [t["center_xyz_mm"] for t in kept])
    centre = (np.array(data.cubes.shape[1:]) - 1) / 2
    errors = []
    for cube, truth in zip(data.cubes, kept):
        if truth["case"] == "inside":
            offset = intensity_centroid(cube, LUNG) - centre
            errors.append(np.abs(offset).max())
    assert max(errors) < 0.5, errors  # voxels (1 mm); measured about 0.05
    assert np.all(data.inside_fraction[[t["case"] == "inside" for t in kept]] == 1.0)


def test_a_nodule_at_the_border_is_padded_with_air(fake_luna, prepared):
    data = CubeSet.load(prepared[2])
    row = [t["case"] for t in fake_luna.truth if t["case"] in ("inside", "border")].index("border")
    cube, fraction = data.cubes[row], data.inside_fraction[row]
    assert 0.4 < fraction < 0.7
    # the first scan has an identity direction and the nodule sits one voxel in from the low x edge
    air = cube == 0.0  # normalize_hu(-1000)
    assert air.mean() == pytest.approx(1 - fraction, abs=1e-6)
    assert np.all(air[:, :, :4]) and not np.any(air[:, :, 8:])
    assert cube[7:9, 7:9, 7:9].min() > 0.6  # the nodule (+40 HU -> 0.74) is at the centre
    # along y and z (not cut) the nodule is still centred
    offset = intensity_centroid(np.where(air, LUNG, cube), LUNG) - 7.5
    assert np.abs(offset[:2]).max() < 0.5


def test_skipped_annotations_are_named_in_one_warning_each(fake_luna, prepared):
    _, err, _ = prepared
    missing = next(t["seriesuid"] for t in fake_luna.truth if t["case"] == "no scan")
    outside = next(t for t in fake_luna.truth if t["case"] == "outside")
    assert len(err) == 2, err
    assert "scan was not found" in err[0] and missing in err[0]
    assert outside["seriesuid"] in err[1] and "outside the scan" in err[1]
    assert all(line.startswith("gmmkit prepare-luna: warning:") for line in err)


def test_output_loads_for_training_without_pickle(prepared):
    out = prepared[2]
    with np.load(out, allow_pickle=False) as f:
        assert f["seriesuid"].dtype.kind == "U"
        assert f["cubes"].dtype == np.float32 and f["cubes"].shape[1:] == (16, 16, 16)
        assert float(f["spacing_mm"]) == 1.0
        assert f["center_xyz_mm"].shape == (len(f["cubes"]), 3)
    cubes = CubeSet.load(out, cube=16).cubes
    assert 0.0 <= cubes.min() and cubes.max() <= 1.0


def test_one_process_gives_the_same_cubes(fake_luna, prepared):
    alone = prepare_luna(fake_luna.annotations, scans=fake_luna.scans, jobs=1, progress=False)
    np.testing.assert_array_equal(alone.cubes.cubes, CubeSet.load(prepared[2]).cubes)
    assert alone.scans_read == 3


def test_dicom_series(tmp_path):
    fake = make_fake_luna(tmp_path / "dicom", n_scans=2, nodules_per_scan=1, format="dicom", edge_cases=False, seed=5)
    out = tmp_path / "cubes.npz"
    assert (
        main(
            [
                "prepare-luna",
                "--dicom",
                str(fake.scans),
                "--annotations",
                str(fake.annotations),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    data = CubeSet.load(out)
    assert len(data) == 2 and sorted(map(str, data.seriesuid)) == sorted(t["seriesuid"] for t in fake.truth)
    for cube in data.cubes:
        assert np.abs(intensity_centroid(cube, LUNG) - 7.5).max() < 0.5


# --- errors: one line naming the file or column, exit 2, nothing written --------------------------


@pytest.fixture(scope="module")
def one_scan(tmp_path_factory):
    return make_fake_luna(tmp_path_factory.mktemp("one"), n_scans=1, nodules_per_scan=1, edge_cases=False)


@pytest.fixture
def copy(one_scan, tmp_path):
    shutil.copytree(one_scan.scans, tmp_path / "scans")
    shutil.copy(one_scan.annotations, tmp_path / "annotations.csv")
    return tmp_path


def _run(copy, capsys, *extra, scans=None, annotations=None):
    out = copy / "cubes.npz"
    code = main(
        [
            "prepare-luna",
            "--scans",
            str(scans or copy / "scans"),
            "--annotations",
            str(annotations or copy / "annotations.csv"),
            "--out",
            str(out),
            "--no-progress",
            *extra,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert not out.exists() and not list(copy.glob(".cubes.npz*"))  # nothing half-written
    return code, err


def _raw(copy):
    return next((copy / "scans").rglob("*.raw"))


@pytest.mark.parametrize(
    "damage,named",
    [
        ("missing raw", ".raw: no such file"),
        ("truncated raw", ".raw: holds"),
        ("garbage mhd", ".mhd: not a valid MetaImage header"),
        ("not compressed", ".raw: not zlib-compressed data"),
        ("zero spacing", ".mhd: SimpleITK cannot read it (Zero-valued spacing"),
    ],
)
def test_a_broken_scan_is_named(copy, capsys, damage, named):
    raw = _raw(copy)
    mhd = raw.with_suffix(".mhd")
    header = mhd.read_text()
    if damage == "missing raw":
        raw.unlink()
    elif damage == "truncated raw":
        raw.write_bytes(raw.read_bytes()[:1000])
    elif damage == "garbage mhd":
        mhd.write_bytes(b"\x00\x01 this is not a header")
    elif damage == "not compressed":
        mhd.write_text(header.replace("CompressedData = False", "CompressedData = True"))
    else:
        lines = [ln if not ln.startswith("ElementSpacing") else "ElementSpacing = 0 0 0" for ln in header.splitlines()]
        mhd.write_text("\n".join(lines) + "\n")
    code, err = _run(copy, capsys)
    assert code == 2 and len(err) == 1, err
    assert named in err[0] and str(copy) in err[0]


@pytest.mark.parametrize(
    "csv_text,named",
    [
        ("seriesuid,coordX,coordY,diameter_mm\n1.2.3,1,2,3\n", "missing column coordZ"),
        ("uid,x,y,z\n1.2.3,1,2,3\n", "missing columns seriesuid, coordX, coordY, coordZ"),
        ("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,1,two,3,4\n", "line 2, column coordY"),
        ("", "empty"),
    ],
)
def test_a_bad_annotations_csv_is_named(copy, capsys, csv_text, named):
    (copy / "annotations.csv").write_text(csv_text)
    code, err = _run(copy, capsys)
    assert code == 2 and len(err) == 1 and "annotations.csv" in err[0] and named in err[0], err


def test_no_cube_at_all_is_an_error(copy, capsys):
    (copy / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\nnot.a.scan,1,2,3,4\n")
    code, err = _run(copy, capsys)
    assert code == 2 and "no annotation produced a cube" in err[0] and "not.a.scan" in err[0]


@pytest.mark.parametrize(
    "args,named", [(["--cube", "8"], "--cube"), (["--jobs", "0"], "--jobs"), (["--spacing", "0"], "--spacing")]
)
def test_bad_flags_are_named(copy, capsys, args, named):
    code, err = _run(copy, capsys, *args)
    assert code == 2 and named in err[0]


def test_missing_scans_folder(copy, capsys):
    code, err = _run(copy, capsys, scans=copy / "nope")
    assert code == 2 and "nope: no such folder" in err[0]


def test_annotations_reader(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("seriesuid,coordX,coordY,coordZ,class\n1.2,1.5,-2,3e1,1\n\n1.3,0,0,0,0\n")
    ann = read_annotations(path)
    assert ann.seriesuid.dtype.kind == "U" and list(ann.seriesuid) == ["1.2", "1.3"]
    np.testing.assert_allclose(ann.center_xyz_mm, [[1.5, -2, 30], [0, 0, 0]])
    assert np.all(np.isnan(ann.diameter_mm))  # no diameter_mm column: NaN
    with pytest.raises(DatasetError, match="no such annotations file"):
        read_annotations(tmp_path / "missing.csv")


def test_a_scan_with_non_finite_voxels_is_named(tmp_path):
    from gmmkit.data.images import read_image

    volume = np.full((4, 5, 6), -800.0, np.float32)
    volume[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(tmp_path / "nan.mhd"))
    with pytest.raises(DatasetError, match=r"nan\.mhd: holds 1 non-finite voxels .* x=3, y=2, z=1"):
        read_image(tmp_path / "nan.mhd")
