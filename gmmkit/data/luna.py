"""LUNA16: the annotations CSV, and cubes cut around every annotated nodule of a set of scans.

:func:`prepare_luna` reads each annotated scan once (however many nodules it has), in a pool of processes,
and cuts a world-aligned cube of isotropic spacing centred on every annotated nodule
(:func:`gmmkit.data.geometry.cut_cube`), normalised like every other data source
(:func:`gmmkit.data.intensity.normalize_hu`). Annotations whose scan is not found, and annotations whose
centre lies outside their scan, are skipped and reported; a cube that reaches past the scan's border is
padded with air. A scan that cannot be read stops everything with an error naming the file. The scans are
read by :mod:`gmmkit.data.images` (SimpleITK); the result is a :class:`~gmmkit.data.cubes.CubeSet`.
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import checks
from ..errors import DatasetError
from ..files import atomic_open, existing_path
from ..model.config import MIN_CUBE
from .cubes import CubeSet
from .geometry import cut_cube, inside_extent, world_to_index
from .images import ScanSource, find_dicom_series, find_mhd_scans
from .intensity import AIR_HU, HU_WINDOW, normalize_hu
from .pool import map_in_processes

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
REQUIRED_COLUMNS = ANNOTATION_COLUMNS[:4]  # diameter_mm is optional (NaN when absent)


@dataclass(frozen=True)
class Annotations:
    """Nodule positions in world mm, one row each, in the order of the CSV."""

    seriesuid: np.ndarray  # (N,) unicode
    center_xyz_mm: np.ndarray  # (N, 3) float64
    diameter_mm: np.ndarray  # (N,) float32, NaN where the CSV has no diameter

    def __len__(self) -> int:
        return len(self.seriesuid)

    def by_series(self) -> dict[str, np.ndarray]:
        """Row indices of each seriesuid, in order of first appearance."""
        groups: dict[str, list[int]] = {}
        for i, uid in enumerate(self.seriesuid):
            groups.setdefault(str(uid), []).append(i)
        return {uid: np.asarray(rows) for uid, rows in groups.items()}


def read_annotations(path: str | Path) -> Annotations:
    """Read a LUNA16-style CSV: ``seriesuid,coordX,coordY,coordZ[,diameter_mm]`` (world mm, x y z).

    Other columns (LUNA's ``candidates.csv`` has ``class``) are ignored. Errors name the file, and the
    column or line at fault.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such annotations file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read it as CSV ({exc})") from None
    if not rows:
        raise DatasetError(f"{path}: empty; expected a header {','.join(ANNOTATION_COLUMNS)}")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DatasetError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
            f"expected {','.join(ANNOTATION_COLUMNS)} (diameter_mm optional), found "
            f"{','.join(header) or 'no columns'}"
        )
    col = {name: header.index(name) for name in ANNOTATION_COLUMNS if name in header}
    uids, centres, diameters = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) < len(header):
            raise DatasetError(f"{path}: line {line} has {len(row)} fields, the header has {len(header)}")
        uid = row[col["seriesuid"]].strip()
        if not uid:
            raise DatasetError(f"{path}: line {line}: empty seriesuid")
        xyz = [_number(path, line, name, row[col[name]]) for name in ("coordX", "coordY", "coordZ")]
        diameter = _number(path, line, "diameter_mm", row[col["diameter_mm"]]) if "diameter_mm" in col else math.nan
        uids.append(uid)
        centres.append(xyz)
        diameters.append(diameter)
    if not uids:
        raise DatasetError(f"{path}: no annotation rows after the header")
    return Annotations(
        seriesuid=np.asarray(uids, dtype=str),
        center_xyz_mm=np.asarray(centres, dtype=np.float64).reshape(-1, 3),
        diameter_mm=np.asarray(diameters, dtype=np.float32),
    )


def _number(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(
            f"{path}: line {line}, column {column}: expected a number, received {text.strip()!r}"
        ) from None
    if not math.isfinite(value):
        raise DatasetError(f"{path}: line {line}, column {column}: expected a finite number, received {text!r}")
    return value


def write_annotations(path: str | Path, annotations: Annotations) -> None:
    """Write ``annotations`` as a LUNA16 CSV (atomically)."""
    with atomic_open(path, "w") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(ANNOTATION_COLUMNS)
        for uid, (x, y, z), d in zip(annotations.seriesuid, annotations.center_xyz_mm, annotations.diameter_mm):
            writer.writerow(
                [uid, repr(float(x)), repr(float(y)), repr(float(z)), "" if math.isnan(d) else repr(float(d))]
            )


# --- scans to cubes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Skipped:
    """An annotation that produced no cube, and why."""

    row: int  # 0-based index among the annotations (the CSV's data rows)
    seriesuid: str
    center_xyz_mm: tuple[float, float, float]
    reason: str  # "no scan" or "outside the scan ..."


@dataclass
class Prepared:
    """What :func:`prepare_luna` made: the cubes, the annotations it skipped, and how long it took."""

    cubes: CubeSet
    skipped: list[Skipped] = field(default_factory=list)
    scans_read: int = 0
    seconds: float = 0.0

    def save(self, path: str | os.PathLike) -> None:
        self.cubes.save(path)

    def warnings(self) -> list[str]:
        """One line per problem: scans not found (naming their seriesuids), then each annotation outside."""
        return describe_skipped(self.skipped)


def describe_skipped(skipped: Sequence[Skipped]) -> list[str]:
    """Warning lines for skipped annotations: one naming every missing scan, then one per other skip."""
    lines = []
    missing = sorted({s.seriesuid for s in skipped if s.reason == "no scan"})
    if missing:
        rows = sum(s.reason == "no scan" for s in skipped)
        lines.append(f"{rows} annotation(s) skipped, their scan was not found: {', '.join(missing)}")
    for s in skipped:
        if s.reason != "no scan":
            x, y, z = s.center_xyz_mm
            lines.append(
                f"annotation row {s.row + 1} skipped ({s.seriesuid} at x={x:.1f}, y={y:.1f}, z={z:.1f} mm): {s.reason}"
            )
    return lines


def prepare_luna(
    annotations: str | os.PathLike | Annotations,
    scans: str | os.PathLike | None = None,
    dicom: str | os.PathLike | None = None,
    cube: int = 16,
    spacing_mm: float = 1.0,
    jobs: int = 1,
    progress: bool = True,
) -> Prepared:
    """Cut a normalised cube around every annotated nodule.

    ``annotations``: a LUNA16 CSV (or :class:`Annotations`); ``scans``: folder of .mhd files, or ``dicom``:
    folder of DICOM series. ``cube`` voxels per side at ``spacing_mm``; ``jobs`` processes read scans in
    parallel, each scan once; ``progress`` shows a tqdm bar. Rows come out in CSV order.
    Raises :class:`DatasetError` when a scan is unreadable (naming it) or when no cube could be cut.
    """
    if (scans is None) == (dicom is None):
        raise ValueError("prepare_luna: pass exactly one of scans= (.mhd folder) or dicom= (DICOM folder)")
    if scans is not None:
        existing_path("luna.scans", scans, "folder")
    if dicom is not None:
        existing_path("luna.dicom", dicom, "folder")
    if not isinstance(annotations, Annotations):
        existing_path("luna.annotations", annotations)
    checks.integer("luna.cube", cube)
    if cube < MIN_CUBE:
        checks.fail("luna.cube", f"at least {MIN_CUBE} (the encoder's receptive field)", cube)
    checks.positive_float("luna.spacing_mm", spacing_mm)
    checks.positive_int("luna.jobs", jobs)
    began = time.perf_counter()
    ann = annotations if isinstance(annotations, Annotations) else read_annotations(annotations)
    sources = find_mhd_scans(scans) if scans is not None else find_dicom_series(dicom)

    skipped: list[Skipped] = []
    tasks = []
    for uid, rows in ann.by_series().items():
        if uid not in sources:
            skipped += [Skipped(int(r), uid, tuple(ann.center_xyz_mm[r]), "no scan") for r in rows]
        else:
            tasks.append((uid, sources[uid], rows, ann.center_xyz_mm[rows], cube, float(spacing_mm)))

    results: dict[int, tuple[np.ndarray, float]] = {}
    for uid, outcome in map_in_processes(_cut_task, tasks, jobs, progress, "scan"):
        for row, cube_values, fraction, reason in outcome:
            if reason is None:
                results[row] = (cube_values, fraction)
            else:
                skipped.append(Skipped(row, uid, tuple(ann.center_xyz_mm[row]), reason))
    skipped.sort(key=lambda s: s.row)
    if not results:
        raise DatasetError("no annotation produced a cube: " + "; ".join(describe_skipped(skipped)))
    rows = np.array(sorted(results))
    cubes = CubeSet(
        cubes=np.stack([results[r][0] for r in rows]),
        seriesuid=ann.seriesuid[rows],
        center_xyz_mm=ann.center_xyz_mm[rows],
        diameter_mm=ann.diameter_mm[rows],
        inside_fraction=np.array([results[r][1] for r in rows], dtype=np.float32),
        spacing_mm=float(spacing_mm),
        hu_window=HU_WINDOW,
    )
    return Prepared(cubes, skipped, scans_read=len(tasks), seconds=time.perf_counter() - began)


def cut_scan(
    source: ScanSource, rows: np.ndarray, centres_xyz: np.ndarray, cube: int, spacing_mm: float
) -> list[tuple[int, np.ndarray | None, float, str | None]]:
    """Read one scan and cut the cubes of its annotations: ``(row, normalised cube, inside fraction, reason)``.

    ``reason`` is None for a cube, or says why the annotation was skipped (its centre is outside the scan).
    """
    scan = source.read()
    out = []
    for row, centre in zip(rows, centres_xyz):
        if not inside_extent(world_to_index(centre, scan.geometry), scan.volume.shape):
            lo, hi = scan.world_bounds()
            span = ", ".join(f"{a} {low:.1f} to {high:.1f}" for a, low, high in zip("xyz", lo, hi))
            out.append((int(row), None, 0.0, f"its centre lies outside the scan ({span} mm)"))
            continue
        hu, fraction = cut_cube(scan.volume, scan.geometry, centre, cube, spacing_mm, fill=AIR_HU)
        out.append((int(row), normalize_hu(hu), fraction, None))
    return out


def _cut_task(task):
    uid, source, rows, centres, cube, spacing = task
    return uid, cut_scan(source, rows, centres, cube, spacing)
