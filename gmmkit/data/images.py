"""Medical images through SimpleITK: the only gmmkit module that imports it (lazily, at first use).

Scans
    LUNA16 ships scans as MetaImage pairs ``<seriesuid>.mhd`` (a text header: size, spacing, origin,
    direction) plus ``<seriesuid>.raw`` (the voxels), in folders subset0 to subset9; :func:`find_mhd_scans`
    finds them all under a folder. DICOM scans are one file per slice; :func:`find_dicom_series` groups the
    files under a folder by SeriesInstanceUID (GDCM reads the headers), which plays the role of LUNA's
    seriesuid. Either way the voxels are Hounsfield units, and :func:`read_image` or :func:`read_dicom`
    gives a :class:`Scan`: the voxel array and its :class:`~gmmkit.data.geometry.Geometry`.

Writing
    :func:`write_image` writes a volume with its spacing as .nii.gz, .nii, .mhd (+ .raw), .mha or .nrrd,
    atomically; :func:`write_dicom_series` writes a CT series (for test data).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DatasetError
from .geometry import Geometry, index_to_world

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
        corners = np.array(
            [[a, b, c] for a in (-0.5, n[0] - 0.5) for b in (-0.5, n[1] - 0.5) for c in (-0.5, n[2] - 0.5)]
        )
        world = index_to_world(corners, self.geometry)
        return np.stack([world.min(axis=0), world.max(axis=0)])


@dataclass(frozen=True)
class ScanSource:
    """Where to read one scan: a .mhd file, or the slice files of a DICOM series."""

    kind: str  # "mhd" or "dicom"
    paths: tuple[str, ...]

    def read(self) -> Scan:
        return read_image(self.paths[0]) if self.kind == "mhd" else read_dicom(self.paths)

    def __str__(self) -> str:
        return self.paths[0] if self.kind == "mhd" else str(Path(self.paths[0]).parent)


def _scan_from_image(image, source: str) -> Scan:
    sitk = _sitk()
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(
            f"{source}: expected a 3-D scalar CT volume, found {image.GetDimension()}-D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel"
        )
    try:
        geometry = Geometry.of(image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    except ValueError as exc:
        raise DatasetError(f"{source}: {exc}") from None
    volume = sitk.GetArrayFromImage(image)
    if np.issubdtype(volume.dtype, np.floating):
        bad = ~np.isfinite(volume)
        if bad.any():
            z, y, x = (int(i) for i in np.argwhere(bad)[0])
            raise DatasetError(
                f"{source}: holds {int(bad.sum())} non-finite voxels (NaN or Inf; the first at "
                f"voxel x={x}, y={y}, z={z})"
            )
    return Scan(volume=volume, geometry=geometry, source=source)


# MetaImage element types and their sizes in bytes
_MET_BYTES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}


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
        raise DatasetError(
            f"{path}: not a valid MetaImage header (missing {', '.join(missing)}); expected "
            "'Key = value' lines with NDims, DimSize, ElementType and ElementDataFile"
        )
    try:
        dims = [int(v) for v in header["DimSize"].split()]
        channels = int(header.get("ElementNumberOfChannels", "1"))
        offset = max(int(header.get("HeaderSize", "0")), 0)
    except ValueError:
        raise DatasetError(f"{path}: DimSize {header['DimSize']!r} is not a list of integers") from None
    if header["NDims"] != "3" or len(dims) != 3 or min(dims) <= 0:
        raise DatasetError(
            f"{path}: expected a 3-D scan (NDims = 3, three positive DimSize), found "
            f"NDims = {header['NDims']}, DimSize = {header['DimSize']}"
        )
    data_name = header["ElementDataFile"]
    if data_name in ("LOCAL", "LIST") or "%" in data_name:
        return  # voxels inside the header file, or one file per slice: SimpleITK checks those
    data = path.parent / data_name
    if not data.is_file():
        raise DatasetError(f"{data}: no such file (the voxel data that {path.name} names in ElementDataFile)")
    compressed = header.get("CompressedData", "False").lower() == "true"
    itemsize = _MET_BYTES.get(header["ElementType"])
    if itemsize is None:
        raise DatasetError(
            f"{path}: unknown ElementType {header['ElementType']!r}, expected one of {', '.join(_MET_BYTES)}"
        )
    if compressed:  # a cheap look at the zlib header (SimpleITK only prints "Uncompress failed")
        with open(data, "rb") as fh:
            head = fh.read(1024)
        try:
            zlib.decompressobj().decompress(head)
        except zlib.error:
            raise DatasetError(
                f"{data}: not zlib-compressed data, though {path.name} says CompressedData = True"
            ) from None
    else:
        need = offset + math.prod(dims) * channels * itemsize
        have = data.stat().st_size
        if have < need:
            raise DatasetError(
                f"{data}: holds {have} bytes, {path.name} needs {need} (DimSize "
                f"{header['DimSize']} of {header['ElementType']}); the file is truncated"
            )


def read_image(path: str | os.PathLike) -> Scan:
    """Read a scan or image SimpleITK knows (.mhd + .raw/.zraw, .mha, .nii.gz, .nrrd, ...) with its geometry.

    A .mhd header and its data file are checked first (:func:`check_mhd`): SimpleITK's own errors about them
    are vague."""
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


# --- writing images ------------------------------------------------------------------------------


def image_suffix(path: str | os.PathLike) -> str:
    """The image format suffix of ``path`` (``.nii.gz``, ``.mhd``, ...), or a clear error."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: expected a file name ending in {', '.join(IMAGE_SUFFIXES)}")


def write_image(
    path: str | os.PathLike,
    volume_zyx: np.ndarray,
    spacing_xyz: Sequence[float],
    origin_xyz: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Sequence[float] | None = None,
) -> Path:
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


def write_dicom_series(
    folder: str | os.PathLike, volume_zyx: np.ndarray, geometry: Geometry, series_uid: str
) -> list[Path]:
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
        for tag, value in (
            ("0008|0060", "CT"),
            ("0008|0008", "DERIVED\\SECONDARY"),
            ("0020|000e", series_uid),
            ("0020|000d", series_uid + ".1"),
            ("0008|0018", f"{series_uid}.2.{k + 1}"),
            ("0020|0037", orientation),
            ("0020|0032", position),
            ("0020|0013", str(k + 1)),
            ("0018|0050", f"{geometry.spacing[2]:.6f}"),
            ("0008|103e", "gmmkit fake CT"),
        ):
            plane.SetMetaData(tag, value)
        paths.append(folder / f"slice{k:04d}.dcm")
        writer.SetFileName(str(paths[-1]))
        writer.Execute(plane)
    return paths
