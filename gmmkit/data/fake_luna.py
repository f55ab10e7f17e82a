"""A small fake LUNA16 data set, written on the fly for tests and notebook 04.

:func:`make_fake_luna` writes scans in LUNA16's layout (or DICOM series) with bright spheres at known world
positions and awkward geometry (anisotropic voxels, non-zero origins, flipped axes, a nodule at the border,
an annotation outside its scan and one whose scan is missing), plus the annotations CSV, and returns the
truth for every annotation row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .geometry import Geometry, index_to_world
from .images import write_dicom_series, write_image
from .luna import Annotations, write_annotations

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


def make_fake_luna(
    directory: str | os.PathLike,
    n_scans: int = 3,
    nodules_per_scan: int = 2,
    shape_zyx: tuple[int, int, int] = (36, 48, 40),
    seed: int = 0,
    format: str = "mhd",
    edge_cases: bool = True,
    noise_hu: float = 10.0,
    subsets: int = 2,
    cube_mm: float = 16.0,
) -> FakeLuna:
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
        raise ValueError(
            f"n_scans, nodules_per_scan: expected a positive count and a count, received "
            f"{n_scans!r}, {nodules_per_scan!r}"
        )
    directory = Path(directory)
    scans_dir = directory / "scans"
    rng = np.random.default_rng(seed)
    flips = (np.eye(3), np.diag([-1.0, -1.0, 1.0]), np.diag([1.0, 1.0, -1.0]))
    truth: list[dict] = []
    for s in range(n_scans):
        uid = f"{_FAKE_UID_ROOT}.{seed}.{s + 1}"
        for attempt in range(20):  # random placement can fail in a short scan: draw another geometry
            in_plane = round(float(rng.uniform(0.65, 0.9)), 3)
            geometry = Geometry.of(
                origin=np.round(rng.uniform(-200, 200, 3), 1),
                spacing=(in_plane, in_plane, float(rng.choice([1.25, 2.0, 2.5]))),
                direction=flips[s % len(flips)],
            )
            try:
                nodules = _place_nodules(
                    rng, geometry, shape_zyx, nodules_per_scan, cube_mm, border=edge_cases and s == 0
                )
                break
            except ValueError:
                if attempt == 19:
                    raise
        volume = _render_scan(rng, geometry, shape_zyx, nodules, noise_hu)
        if format == "mhd":
            write_image(
                scans_dir / f"subset{s % subsets}" / f"{uid}.mhd",
                volume,
                geometry.spacing,
                geometry.origin,
                geometry.direction.reshape(-1),
            )
        else:
            write_dicom_series(scans_dir / uid, volume, geometry, uid)
        truth += [{"seriesuid": uid, "center_xyz_mm": c, "diameter_mm": d, "case": case} for c, d, case in nodules]
        if edge_cases and s == 0:
            outside = index_to_world(np.array([-20.0, shape_zyx[1] / 2, shape_zyx[0] / 2]), geometry)
            truth.append({"seriesuid": uid, "center_xyz_mm": outside, "diameter_mm": 6.0, "case": "outside"})
    if edge_cases:
        truth.append(
            {
                "seriesuid": f"{_FAKE_UID_ROOT}.{seed}.999",
                "center_xyz_mm": np.array([10.0, -20.0, 30.0]),
                "diameter_mm": 5.0,
                "case": "no scan",
            }
        )
    for t in truth:
        t["center_xyz_mm"] = tuple(float(v) for v in t["center_xyz_mm"])
        t["diameter_mm"] = float(t["diameter_mm"])
    annotations = Annotations(
        seriesuid=np.array([t["seriesuid"] for t in truth], dtype=str),
        center_xyz_mm=np.array([t["center_xyz_mm"] for t in truth]).reshape(-1, 3),
        diameter_mm=np.array([t["diameter_mm"] for t in truth], dtype=np.float32),
    )
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
        raise ValueError(
            f"shape_zyx {tuple(shape_zyx)}: too small for {cube_mm} mm cubes at spacing {geometry.spacing.tolist()} mm"
        )
    for _ in range(count):
        for _attempt in range(2000):
            diameter = float(rng.uniform(4.0, 9.0))
            centre = index_to_world(rng.uniform(margin, size_xyz - 1 - margin), geometry)
            # no other nodule may reach into this cube, nor this nodule into theirs (Chebyshev distance)
            if all(np.max(np.abs(centre - c)) >= half_cube + max(d, diameter) / 2 + 1.0 for c, d, _ in placed):
                placed.append((centre, diameter, "inside"))
                break
        else:
            raise ValueError(
                f"shape_zyx {tuple(shape_zyx)}: no room for {count} separated nodules; "
                "use fewer nodules per scan or a larger shape"
            )
    return placed


def _render_scan(rng, geometry: Geometry, shape_zyx, nodules, noise_hu: float) -> np.ndarray:
    """Lung with soft-edged spheres (0.4 mm partial-volume margin), in int16 HU."""
    # world = origin + sum over array axes of index * spacing * direction column: three broadcast terms
    steps = geometry.direction * geometry.spacing  # column a: world step of one voxel along index axis a
    k, j, i = (np.arange(n, dtype=np.float32) for n in shape_zyx)
    hu = np.full(shape_zyx, LUNG_HU, dtype=np.float32) + rng.normal(0.0, noise_hu, shape_zyx).astype(np.float32)
    for centre, diameter, _ in nodules:
        d = geometry.origin - centre  # per world axis w: d_w + i s_wx + j s_wy + k s_wz
        squared = sum(
            (d[w] + i[None, None, :] * steps[w, 0] + j[None, :, None] * steps[w, 1] + k[:, None, None] * steps[w, 2])
            ** 2
            for w in range(3)
        )
        inside = 1.0 / (1.0 + np.exp(np.clip((np.sqrt(squared) - diameter / 2) / 0.4, -50, 50)))
        hu += (inside * (NODULE_HU - LUNG_HU)).astype(np.float32)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16)
