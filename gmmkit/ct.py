"""Real CT through SimpleITK: LUNA16 .mhd scans and DICOM series in, nodule cubes out, images written.

This is the only gmmkit module that imports SimpleITK (lazily: ``import gmmkit.ct`` is cheap). The array
math it relies on (world to voxel, cube cutting with air padding, the annotations CSV and the
``cubes.npz`` format) is plain numpy in :mod:`gmmkit.data.luna`.

From scans to cubes
    :func:`prepare_luna` reads each annotated scan once (however many nodules it has), in a pool of
    processes, and cuts a world-aligned cube of isotropic spacing centred on every annotated nodule
    (:func:`gmmkit.data.luna.cut_cube`), normalised like the synthetic set
    (:func:`gmmkit.data.intensity.normalize_hu`). Annotations whose scan is not found, and annotations
    whose centre lies outside their scan, are skipped and reported; a cube that reaches past the scan's
    border is padded with air. A scan that cannot be read stops everything with an error naming the file.

Scans
    LUNA16 ships scans as MetaImage pairs ``<seriesuid>.mhd`` (a text header: size, spacing, origin,
    direction) plus ``<seriesuid>.raw`` (the voxels), in folders subset0 to subset9; :func:`find_mhd_scans`
    finds them all under a folder. DICOM scans are one file per slice; :func:`find_dicom_series` groups the
    files under a folder by SeriesInstanceUID (GDCM reads the headers), which plays the role of LUNA's
    seriesuid. Either way the voxels are Hounsfield units.

Writing
    :func:`write_image` writes a volume with its spacing as .nii.gz, .nii, .mhd (+ .raw), .mha or .nrrd,
    atomically; :func:`read_image` reads any of them back.

Test data
    :func:`make_fake_luna` writes a small LUNA-format folder (or DICOM series) with bright spheres at known
    world positions and awkward geometry: anisotropic voxels, non-zero origins, flipped axes, a nodule at
    the border, an annotation outside its scan and one whose scan is missing.
"""
from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import os
import re
import shutil
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .data.intensity import AIR_HU, HU_WINDOW, normalize_hu
from .data.luna import (Annotations, CubeSet, Geometry, cut_cube, index_to_world, inside_extent,
                        read_annotations, world_to_index, write_annotations)
from .errors import DatasetError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd")


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError:  # pragma: no cover - SimpleITK is in the [lab] extra
        raise DatasetError("reading CT needs SimpleITK: pip install 'gmmkit[lab]' (or pip install SimpleITK)") from None
    return sitk


def _first_line(exc: Exception) -> str:
    """SimpleITK errors start with a C++ source location; keep the line that says what went wrong."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception thrown", "/"))]
    return re.sub(r"^ITK ERROR: \w+\(0x[0-9a-fA-F]+\):\s*", "", (useful or lines or [type(exc).__name__])[0])


# --- scans ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scan:
    """A CT volume in HU, indexed ``volume[z, y, x]``, and where it sits in the world."""

    volume: np.ndarray
    geometry: Geometry
    source: str  # file or folder it was read from

    def world_bounds(self) -> np.ndarray:
        """(2, 3): lowest and highest world x, y, z over the scan's extent (its voxels' outer faces)."""
        n = np.asarray(self.volume.shape[::-1], dtype=np.float64)
        corners = np.array([[a, b, c] for a in (-0.5, n[0] - 0.5) for b in (-0.5, n[1] - 0.5)
                            for c in (-0.5, n[2] - 0.5)])
        world = index_to_world(corners, self.geometry)
        return np.stack([world.min(axis=0), world.max(axis=0)])


@dataclass(frozen=True)
class ScanSource:
    """Where to read one scan: a .mhd file, or the slice files of a DICOM series."""

    kind: str  # "mhd" or "dicom"
    paths: tuple[str, ...]

    def read(self) -> Scan:
        return read_mhd(self.paths[0]) if self.kind == "mhd" else read_dicom(self.paths)

    def __str__(self) -> str:
        return self.paths[0] if self.kind == "mhd" else str(Path(self.paths[0]).parent)


def _scan_from_image(image, source: str) -> Scan:
    sitk = _sitk()
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(f"{source}: expected a 3-D scalar CT volume, found {image.GetDimension()}-D with "
                           f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel")
    try:
        geometry = Geometry.of(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    except ValueError as exc:
        raise DatasetError(f"{source}: {exc}") from None
    volume = sitk.GetArrayFromImage(image)
    if np.issubdtype(volume.dtype, np.floating):
        bad = ~np.isfinite(volume)
        if bad.any():
            z, y, x = (int(i) for i in np.argwhere(bad)[0])
            raise DatasetError(f"{source}: holds {int(bad.sum())} non-finite voxels (NaN or Inf; the first at "
                               f"voxel x={x}, y={y}, z={z})")
    return Scan(volume=volume, geometry=geometry, source=source)


# MetaImage element types and their sizes in bytes
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


def check_mhd(path: str | os.PathLike) -> None:
    """Check a MetaImage header and its data file before SimpleITK reads them (its own errors are vague).

    Raises :class:`DatasetError` naming the .mhd when the header is unreadable or incomplete, and naming
    the data file when it is missing or shorter than the header promises.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()[:65536]
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror})") from None
    header: dict[str, str] = {}
    for line in raw.decode("latin-1").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            header[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    needed = ("NDims", "DimSize", "ElementType", "ElementDataFile")
    missing = [k for k in needed if k not in header]
    if missing:
        raise DatasetError(f"{path}: not a valid MetaImage header (missing {', '.join(missing)}); expected "
                           "'Key = value' lines with NDims, DimSize, ElementType and ElementDataFile")
    try:
        dims = [int(v) for v in header["DimSize"].split()]
        channels = int(header.get("ElementNumberOfChannels", "1"))
        offset = max(int(header.get("HeaderSize", "0")), 0)
    except ValueError:
        raise DatasetError(f"{path}: DimSize {header['DimSize']!r} is not a list of integers") from None
    if header["NDims"] != "3" or len(dims) != 3 or min(dims) <= 0:
        raise DatasetError(f"{path}: expected a 3-D scan (NDims = 3, three positive DimSize), found "
                           f"NDims = {header['NDims']}, DimSize = {header['DimSize']}")
    data_name = header["ElementDataFile"]
    if data_name in ("LOCAL", "LIST") or "%" in data_name:
        return  # voxels inside the header file, or one file per slice: SimpleITK checks those
    data = path.parent / data_name
    if not data.is_file():
        raise DatasetError(f"{data}: no such file (the voxel data that {path.name} names in ElementDataFile)")
    compressed = header.get("CompressedData", "False").lower() == "true"
    itemsize = _MET_BYTES.get(header["ElementType"])
    if itemsize is None:
        raise DatasetError(f"{path}: unknown ElementType {header['ElementType']!r}, expected one of "
                           f"{', '.join(_MET_BYTES)}")
    if compressed:  # a cheap look at the zlib header (SimpleITK only prints "Uncompress failed")
        with open(data, "rb") as fh:
            head = fh.read(1024)
        try:
            zlib.decompressobj().decompress(head)
        except zlib.error:
            raise DatasetError(f"{data}: not zlib-compressed data, though {path.name} says CompressedData = True") from None
    else:
        need = offset + math.prod(dims) * channels * itemsize
        have = data.stat().st_size
        if have < need:
            raise DatasetError(f"{data}: holds {have} bytes, {path.name} needs {need} (DimSize "
                               f"{header['DimSize']} of {header['ElementType']}); the file is truncated")


def read_mhd(path: str | os.PathLike) -> Scan:
    """Read a MetaImage (.mhd + .raw/.zraw, or .mha) scan, checked first by :func:`check_mhd`."""
    path = Path(path)
    if path.suffix.lower() == ".mhd":
        check_mhd(path)
    elif not path.is_file():
        raise DatasetError(f"{path}: no such file")
    sitk = _sitk()
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DatasetError(f"{path}: SimpleITK cannot read it ({_first_line(exc)})") from None
    return _scan_from_image(image, str(path))


def read_dicom(files: Sequence[str | os.PathLike]) -> Scan:
    """Read one DICOM series from its slice files (as :func:`find_dicom_series` lists them)."""
    sitk = _sitk()
    files = [str(f) for f in files]
    folder = str(Path(files[0]).parent) if files else "?"
    if not files:
        raise DatasetError("read_dicom: expected the files of a DICOM series, received none")
    for f in files:
        if not os.path.isfile(f):
            raise DatasetError(f"{f}: no such file (a slice of the DICOM series in {folder})")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise DatasetError(f"{folder}: SimpleITK cannot read the DICOM series ({_first_line(exc)})") from None
    return _scan_from_image(image, folder)


def read_image(path: str | os.PathLike) -> Scan:
    """Read any image SimpleITK knows (.nii.gz, .mhd, .mha, .nrrd, ...) with its geometry."""
    path = Path(path)
    if path.suffix.lower() == ".mhd":
        return read_mhd(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    sitk = _sitk()
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DatasetError(f"{path}: SimpleITK cannot read it ({_first_line(exc)})") from None
    return _scan_from_image(image, str(path))


def find_mhd_scans(root: str | os.PathLike) -> dict[str, ScanSource]:
    """Every ``<seriesuid>.mhd`` under ``root`` (LUNA's subset0..subset9 included), by seriesuid."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (expected the folder holding LUNA's subset0..subset9)")
    found: dict[str, ScanSource] = {}
    for path in sorted(root.rglob("*.mhd")):
        uid = path.stem
        if uid in found:
            raise DatasetError(f"{path}: seriesuid {uid} also found as {found[uid].paths[0]}; keep one of them")
        found[uid] = ScanSource("mhd", (str(path),))
    if not found:
        raise DatasetError(f"{root}: no .mhd files found under it")
    return found


def find_dicom_series(root: str | os.PathLike) -> dict[str, ScanSource]:
    """Every DICOM series under ``root`` (any folder depth), by SeriesInstanceUID."""
    sitk = _sitk()
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (expected one sub-folder per DICOM series)")
    found: dict[str, ScanSource] = {}
    for folder, _, files in sorted(os.walk(root)):
        if not files:
            continue
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder):
            names = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))
            if uid in found:
                raise DatasetError(f"{folder}: SeriesInstanceUID {uid} also found in {found[uid]}; keep one")
            found[uid] = ScanSource("dicom", names)
    if not found:
        raise DatasetError(f"{root}: no DICOM series found under it")
    return found


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
            lines.append(f"annotation row {s.row + 1} skipped ({s.seriesuid} at x={x:.1f}, y={y:.1f}, "
                         f"z={z:.1f} mm): {s.reason}")
    return lines


def prepare_luna(annotations: str | os.PathLike | Annotations, scans: str | os.PathLike | None = None,
                 dicom: str | os.PathLike | None = None, cube: int = 16, spacing_mm: float = 1.0,
                 jobs: int = 1, progress: bool = True) -> Prepared:
    """Cut a normalised cube around every annotated nodule.

    ``annotations``: a LUNA16 CSV (or :class:`Annotations`); ``scans``: folder of .mhd files, or ``dicom``:
    folder of DICOM series. ``cube`` voxels per side at ``spacing_mm``; ``jobs`` processes read scans in
    parallel, each scan once; ``progress`` shows a tqdm bar. Rows come out in CSV order.
    Raises :class:`DatasetError` when a scan is unreadable (naming it) or when no cube could be cut.
    """
    if (scans is None) == (dicom is None):
        raise ValueError("prepare_luna: pass exactly one of scans= (.mhd folder) or dicom= (DICOM folder)")
    if not (isinstance(cube, int) and cube > 0):
        raise ValueError(f"cube: expected a positive integer, received {cube!r}")
    if not (isinstance(spacing_mm, (int, float)) and math.isfinite(spacing_mm) and spacing_mm > 0):
        raise ValueError(f"spacing_mm: expected a positive number, received {spacing_mm!r}")
    if not (isinstance(jobs, int) and jobs > 0):
        raise ValueError(f"jobs: expected a positive integer, received {jobs!r}")
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
    for uid, outcome in _run_tasks(tasks, jobs, progress):
        for row, cube_values, fraction, reason in outcome:
            if reason is None:
                results[row] = (cube_values, fraction)
            else:
                skipped.append(Skipped(row, uid, tuple(ann.center_xyz_mm[row]), reason))
    skipped.sort(key=lambda s: s.row)
    if not results:
        raise DatasetError("no annotation produced a cube: " + "; ".join(describe_skipped(skipped)))
    rows = np.array(sorted(results))
    cubes = CubeSet(cubes=np.stack([results[r][0] for r in rows]), seriesuid=ann.seriesuid[rows],
                    center_xyz_mm=ann.center_xyz_mm[rows], diameter_mm=ann.diameter_mm[rows],
                    inside_fraction=np.array([results[r][1] for r in rows], dtype=np.float32),
                    spacing_mm=float(spacing_mm), hu_window=HU_WINDOW)
    return Prepared(cubes, skipped, scans_read=len(tasks), seconds=time.perf_counter() - began)


def cut_scan(source: ScanSource, rows: np.ndarray, centres_xyz: np.ndarray, cube: int,
             spacing_mm: float) -> list[tuple[int, np.ndarray | None, float, str | None]]:
    """Read one scan and cut the cubes of its annotations: ``(row, normalised cube, inside fraction, reason)``.

    ``reason`` is None for a cube, or says why the annotation was skipped (its centre is outside the scan).
    """
    scan = source.read()
    out = []
    for row, centre in zip(rows, centres_xyz):
        if not inside_extent(world_to_index(centre, scan.geometry), scan.volume.shape):
            lo, hi = scan.world_bounds()
            span = ", ".join(f"{a} {l:.1f} to {h:.1f}" for a, l, h in zip("xyz", lo, hi))
            out.append((int(row), None, 0.0, f"its centre lies outside the scan ({span} mm)"))
            continue
        hu, fraction = cut_cube(scan.volume, scan.geometry, centre, cube, spacing_mm, fill=AIR_HU)
        out.append((int(row), normalize_hu(hu), fraction, None))
    return out


def _cut_task(task):
    uid, source, rows, centres, cube, spacing = task
    return uid, cut_scan(source, rows, centres, cube, spacing)


def _run_tasks(tasks, jobs: int, progress: bool):
    """Yield ``(uid, outcome)`` per scan, in this process (jobs=1) or in a pool of ``jobs`` processes."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc="scans", unit="scan", disable=not progress)
    try:
        if jobs == 1 or len(tasks) <= 1:
            for task in tasks:
                yield _cut_task(task)
                bar.update()
            return
        # forkserver/spawn: the workers start clean even when the caller has threads (TensorFlow, Jupyter)
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        pool = concurrent.futures.ProcessPoolExecutor(min(jobs, len(tasks)), multiprocessing.get_context(method))
        try:
            futures = [pool.submit(_cut_task, task) for task in tasks]
            for future in concurrent.futures.as_completed(futures):
                yield future.result()
                bar.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


# --- writing images ------------------------------------------------------------------------------

def image_suffix(path: str | os.PathLike) -> str:
    """The image format suffix of ``path`` (``.nii.gz``, ``.mhd``, ...), or a clear error."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: expected a file name ending in {', '.join(IMAGE_SUFFIXES)}")


def write_image(path: str | os.PathLike, volume_zyx: np.ndarray, spacing_xyz: Sequence[float],
                origin_xyz: Sequence[float] = (0.0, 0.0, 0.0), direction: Sequence[float] | None = None) -> Path:
    """Write a ``volume[z, y, x]`` with its geometry; the format follows the suffix (see :data:`IMAGE_SUFFIXES`).

    Atomic: SimpleITK writes into a hidden temporary folder beside ``path`` and the files are renamed into
    place, a .mhd's data file before its header, so a reader never sees a partial image. ``.nii.gz`` is
    gzip-compressed, ``.mhd`` gets an uncompressed ``.raw`` beside it (as LUNA16 ships).
    """
    sitk = _sitk()
    path = Path(path)
    suffix = image_suffix(path)
    geometry = Geometry.of(origin_xyz, spacing_xyz, direction)
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume_zyx))
    image.SetSpacing(tuple(map(float, geometry.spacing)))
    image.SetOrigin(tuple(map(float, geometry.origin)))
    image.SetDirection(tuple(map(float, geometry.direction.reshape(-1))))
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        sitk.WriteImage(image, str(staging / path.name), useCompression=suffix == ".nii.gz")
        written = sorted(staging.iterdir(), key=lambda p: p.name == path.name)  # header last
        for f in written:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(f, path.parent / f.name)
    except RuntimeError as exc:
        raise DatasetError(f"{path}: SimpleITK cannot write it ({_first_line(exc)})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def write_dicom_series(folder: str | os.PathLike, volume_zyx: np.ndarray, geometry: Geometry,
                       series_uid: str) -> list[Path]:
    """Write an int16 HU volume as a DICOM series (one CT slice per file) with the given SeriesInstanceUID."""
    sitk = _sitk()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.asarray(volume_zyx, dtype=np.int16))
    image.SetSpacing(tuple(map(float, geometry.spacing)))
    image.SetOrigin(tuple(map(float, geometry.origin)))
    d = tuple(map(float, geometry.direction.reshape(-1)))
    image.SetDirection(d)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    orientation = "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    paths = []
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        position = "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))
        for tag, value in (("0008|0060", "CT"), ("0008|0008", "DERIVED\\SECONDARY"),
                           ("0020|000e", series_uid), ("0020|000d", series_uid + ".1"),
                           ("0008|0018", f"{series_uid}.2.{k + 1}"), ("0020|0037", orientation),
                           ("0020|0032", position), ("0020|0013", str(k + 1)),
                           ("0018|0050", f"{geometry.spacing[2]:.6f}"), ("0008|103e", "gmmkit fake CT")):
            plane.SetMetaData(tag, value)
        paths.append(folder / f"slice{k:04d}.dcm")
        writer.SetFileName(str(paths[-1]))
        writer.Execute(plane)
    return paths


# --- fake LUNA16 data ----------------------------------------------------------------------------

LUNG_HU, NODULE_HU = -850.0, 40.0
_FAKE_UID_ROOT = "1.2.826.0.1.3680043.9.7307.1"  # a DICOM UID root for fakes: valid as file names too


@dataclass(frozen=True)
class FakeLuna:
    """What :func:`make_fake_luna` wrote: the scans folder, the annotations CSV, and the truth per row.

    ``truth[i]`` describes annotation row i: ``seriesuid``, ``center_xyz_mm``, ``diameter_mm`` and
    ``case``: ``inside`` (the cube lies within the scan), ``border`` (part of the cube is outside: padded
    with air), ``outside`` (the centre lies outside the scan: skipped) or ``no scan`` (skipped).
    """

    scans: Path
    annotations: Path
    truth: list[dict]

    def expected_cubes(self) -> int:
        return sum(t["case"] in ("inside", "border") for t in self.truth)


def make_fake_luna(directory: str | os.PathLike, n_scans: int = 3, nodules_per_scan: int = 2,
                   shape_zyx: tuple[int, int, int] = (36, 48, 40), seed: int = 0, format: str = "mhd",
                   edge_cases: bool = True, noise_hu: float = 10.0, subsets: int = 2,
                   cube_mm: float = 16.0) -> FakeLuna:
    """Write a small LUNA16-format data set to ``directory`` and return where and what it is.

    Each scan is lung (-850 HU, Gaussian noise of ``noise_hu``) with ``nodules_per_scan`` soft-edged
    spheres of 4 to 9 mm at +40 HU. Geometry varies per scan: in-plane spacing 0.65 to 0.9 mm and 1.25 to
    2.5 mm between slices, a random non-zero origin, and the direction cycling through identity, x and y
    flipped, z flipped. Nodules are placed so that every nodule's ``cube_mm`` cube holds no other nodule.

    ``format="mhd"``: ``scans/subset<i % subsets>/<seriesuid>.mhd`` + ``.raw`` as LUNA16 ships them;
    ``format="dicom"``: ``scans/<seriesuid>/slice0000.dcm ...``, SeriesInstanceUID = seriesuid.
    ``edge_cases`` adds, in the first scan, a nodule one voxel from the x border and an annotation whose
    centre is outside the scan, and an annotation naming a scan that does not exist.
    The annotations go to ``directory/annotations.csv``.
    """
    if format not in ("mhd", "dicom"):
        raise ValueError(f"format: expected 'mhd' or 'dicom', received {format!r}")
    if n_scans <= 0 or nodules_per_scan < 0:
        raise ValueError(f"n_scans, nodules_per_scan: expected a positive count and a count, received "
                         f"{n_scans!r}, {nodules_per_scan!r}")
    directory = Path(directory)
    scans_dir = directory / "scans"
    rng = np.random.default_rng(seed)
    flips = (np.eye(3), np.diag([-1.0, -1.0, 1.0]), np.diag([1.0, 1.0, -1.0]))
    truth: list[dict] = []
    for s in range(n_scans):
        uid = f"{_FAKE_UID_ROOT}.{seed}.{s + 1}"
        for attempt in range(20):  # random placement can fail in a short scan: draw another geometry
            in_plane = round(float(rng.uniform(0.65, 0.9)), 3)
            geometry = Geometry.of(origin=np.round(rng.uniform(-200, 200, 3), 1),
                                   spacing=(in_plane, in_plane, float(rng.choice([1.25, 2.0, 2.5]))),
                                   direction=flips[s % len(flips)])
            try:
                nodules = _place_nodules(rng, geometry, shape_zyx, nodules_per_scan, cube_mm,
                                         border=edge_cases and s == 0)
                break
            except ValueError:
                if attempt == 19:
                    raise
        volume = _render_scan(rng, geometry, shape_zyx, nodules, noise_hu)
        if format == "mhd":
            write_image(scans_dir / f"subset{s % subsets}" / f"{uid}.mhd", volume, geometry.spacing,
                        geometry.origin, geometry.direction.reshape(-1))
        else:
            write_dicom_series(scans_dir / uid, volume, geometry, uid)
        truth += [{"seriesuid": uid, "center_xyz_mm": c, "diameter_mm": d, "case": case} for c, d, case in nodules]
        if edge_cases and s == 0:
            outside = index_to_world(np.array([-20.0, shape_zyx[1] / 2, shape_zyx[0] / 2]), geometry)
            truth.append({"seriesuid": uid, "center_xyz_mm": outside, "diameter_mm": 6.0, "case": "outside"})
    if edge_cases:
        truth.append({"seriesuid": f"{_FAKE_UID_ROOT}.{seed}.999", "center_xyz_mm": np.array([10.0, -20.0, 30.0]),
                      "diameter_mm": 5.0, "case": "no scan"})
    for t in truth:
        t["center_xyz_mm"] = tuple(float(v) for v in t["center_xyz_mm"])
        t["diameter_mm"] = float(t["diameter_mm"])
    annotations = Annotations(seriesuid=np.array([t["seriesuid"] for t in truth], dtype=str),
                              center_xyz_mm=np.array([t["center_xyz_mm"] for t in truth]).reshape(-1, 3),
                              diameter_mm=np.array([t["diameter_mm"] for t in truth], dtype=np.float32))
    csv_path = directory / "annotations.csv"
    write_annotations(csv_path, annotations)
    return FakeLuna(scans=scans_dir, annotations=csv_path, truth=truth)


def _place_nodules(rng, geometry: Geometry, shape_zyx, count: int, cube_mm: float, border: bool):
    """World centres, diameters and cases of non-interfering nodules inside a scan."""
    size_xyz = np.asarray(shape_zyx[::-1], dtype=np.float64)
    half_cube = cube_mm / 2.0
    placed: list[tuple[np.ndarray, float, str]] = []
    if border:  # one voxel in from the x edge, mid y and z: part of its cube is outside the scan
        centre = index_to_world(np.array([1.0, size_xyz[1] / 2, size_xyz[2] / 2]), geometry)
        placed.append((centre, float(rng.uniform(5.0, 8.0)), "border"))
    margin = (half_cube + 1.0) / geometry.spacing  # in voxels: the whole cube inside the scan
    if np.any(size_xyz - 1 - 2 * margin < 0):
        raise ValueError(f"shape_zyx {tuple(shape_zyx)}: too small for {cube_mm} mm cubes at spacing "
                         f"{geometry.spacing.tolist()} mm")
    for _ in range(count):
        for _attempt in range(2000):
            diameter = float(rng.uniform(4.0, 9.0))
            centre = index_to_world(rng.uniform(margin, size_xyz - 1 - margin), geometry)
            # no other nodule may reach into this cube, nor this nodule into theirs (Chebyshev distance)
            if all(np.max(np.abs(centre - c)) >= half_cube + max(d, diameter) / 2 + 1.0 for c, d, _ in placed):
                placed.append((centre, diameter, "inside"))
                break
        else:
            raise ValueError(f"shape_zyx {tuple(shape_zyx)}: no room for {count} separated nodules; "
                             "use fewer nodules per scan or a larger shape")
    return placed


def _render_scan(rng, geometry: Geometry, shape_zyx, nodules, noise_hu: float) -> np.ndarray:
    """Lung with soft-edged spheres (0.4 mm partial-volume margin), in int16 HU."""
    # world = origin + sum over array axes of index * spacing * direction column: three broadcast terms
    steps = geometry.direction * geometry.spacing  # column a: world step of one voxel along index axis a
    k, j, i = (np.arange(n, dtype=np.float32) for n in shape_zyx)
    hu = np.full(shape_zyx, LUNG_HU, dtype=np.float32) + rng.normal(0.0, noise_hu, shape_zyx).astype(np.float32)
    for centre, diameter, _ in nodules:
        d = geometry.origin - centre  # per world axis w: d_w + i s_wx + j s_wy + k s_wz
        squared = sum((d[w] + i[None, None, :] * steps[w, 0] + j[None, :, None] * steps[w, 1]
                       + k[:, None, None] * steps[w, 2]) ** 2 for w in range(3))
        inside = 1.0 / (1.0 + np.exp(np.clip((np.sqrt(squared) - diameter / 2) / 0.4, -50, 50)))
        hu += (inside * (NODULE_HU - LUNG_HU)).astype(np.float32)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16)
