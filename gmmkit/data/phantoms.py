"""Synthetic lung-nodule CT cubes: the built-in default data set.

Each cube is generated in Hounsfield units on a 1 mm isotropic grid (the spacing LUNA cubes are resampled
to), then windowed and normalised by :func:`gmmkit.data.intensity.normalize_hu`, exactly like real CT.

What a cube contains, in order of construction:

* lung parenchyma around -850 HU with smooth low-frequency texture;
* 0 to 3 vessels: tubes of 0.6 to 1.8 mm radius at soft-tissue density, in random directions;
* in about a quarter of the cubes, the pleura: a chest-wall half-space at +40 HU with the nodule touching it
  (juxtapleural); in another fifth, a vessel runs into the nodule (juxtavascular);
* the nodule, one of the four LIDC visual categories, lobulated (a union of 1 to 4 ellipsoids) with an
  irregular margin (smooth noise on the signed distance):

  - ``solid``: -10 to +60 HU;
  - ``part-solid``: a ground-glass halo (-650 to -450 HU) around a solid core of 30 to 60 % of its size;
  - ``ground-glass``: -700 to -450 HU with mottled texture;
  - ``calcified``: a solid nodule with a dense calcification (+300 to +1000 HU), central or eccentric;

* partial volume from a soft margin, a Gaussian point-spread blur (0.5 to 0.8 mm), and correlated CT noise
  (12 to 35 HU standard deviation).

Every cube depends only on ``(seed, index)``, so a set of 2100 contains the set of 1000 of the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from .. import signals
from ..files import atomic_savez
from .cache import cache_dir, cached_build, key
from .intensity import normalize_hu

CATEGORIES = ("solid", "part-solid", "ground-glass", "calcified")
CATEGORY_WEIGHTS = (0.45, 0.2, 0.2, 0.15)
ATTACHMENTS = ("isolated", "pleura", "vessel")
GENERATOR_VERSION = 1  # bump when the generator's output changes, to invalidate caches


@dataclass(frozen=True)
class PhantomSet:
    """Normalised cubes with what generated them."""

    cubes: np.ndarray  # (N, S, S, S) float32 in [0, 1]
    category: np.ndarray  # (N,) int: index into CATEGORIES
    attachment: np.ndarray  # (N,) int: index into ATTACHMENTS
    diameter_mm: np.ndarray  # (N,) float32: equivalent-sphere diameter of the nodule

    def __len__(self) -> int:
        return len(self.cubes)


def voxel_grid(size: int, spacing_mm: float = 1.0) -> np.ndarray:
    """Voxel-centre coordinates in mm of a ``size``-cube, origin at its centre: (s, s, s, 3), (z, y, x)."""
    ax = (np.arange(size, dtype=np.float32) - (size - 1) / 2.0) * np.float32(spacing_mm)
    z, y, x = np.meshgrid(ax, ax, ax, indexing="ij")
    return np.stack([z, y, x], axis=-1)


def parenchyma_hu(size: int, rng: np.random.Generator, spacing_mm: float = 1.0) -> np.ndarray:
    """Lung parenchyma around -850 HU with smooth low-frequency texture (2.5 mm): a (s, s, s) float32 cube."""
    texture = ndimage.gaussian_filter(rng.standard_normal((size, size, size)).astype(np.float32), 2.5 / spacing_mm)
    return -850.0 + rng.uniform(-30, 30) + 40.0 * texture / (texture.std() + 1e-6)


def paint_vessels(hu: np.ndarray, pts: np.ndarray, rng: np.random.Generator) -> None:
    """0 to 3 vessels: tubes of 0.6 to 1.8 mm radius at soft-tissue density in random directions, through
    points of the middle third of the cube (``pts``: :func:`voxel_grid`)."""
    third = pts.shape[0] * float(pts[1, 0, 0, 0] - pts[0, 0, 0, 0]) / 3  # a third of the side, in mm
    for _ in range(int(rng.integers(0, 4))):
        paint(
            hu,
            tube_distance(pts, rng.uniform(-third, third, 3), unit_vector(rng)),
            rng.uniform(0.6, 1.8),
            rng.uniform(-40, 40),
        )


def paint_vessel_through(hu: np.ndarray, pts: np.ndarray, point: np.ndarray, rng: np.random.Generator) -> None:
    """A vessel that runs through ``point`` (mm): the juxtavascular attachment."""
    paint(hu, tube_distance(pts, point, unit_vector(rng)), rng.uniform(0.9, 1.8), rng.uniform(-20, 40))


def paint_pleura(
    hu: np.ndarray, pts: np.ndarray, centre: np.ndarray, reach: Callable[[np.ndarray], float], rng: np.random.Generator
) -> None:
    """The chest wall: a half-space at +20 to +60 HU whose surface cuts into the nodule.

    The wall's normal is random; its surface lies 0.6 to 1.0 times ``reach(normal)`` (the nodule's extent in
    mm from ``centre`` along the normal) beyond the centre, so the nodule touches or enters it (juxtapleural).
    """
    normal = unit_vector(rng)
    offset = float(normal @ centre) + reach(normal) * rng.uniform(0.6, 1.0)
    paint(hu, offset - pts @ normal, 0.0, rng.uniform(20, 60))  # signed distance < 0 inside the wall


def finish_hu(hu: np.ndarray, rng: np.random.Generator, spacing_mm: float = 1.0) -> np.ndarray:
    """What the scanner adds: a Gaussian point-spread blur of 0.5 to 0.8 mm (partial volume) and noise of
    12 to 35 HU standard deviation, correlated over 0.6 mm."""
    s = hu.shape[0]
    hu = ndimage.gaussian_filter(hu, rng.uniform(0.5, 0.8) / spacing_mm)
    noise = ndimage.gaussian_filter(rng.standard_normal((s, s, s)).astype(np.float32), 0.6 / spacing_mm)
    return hu + rng.uniform(12, 35) * noise / (noise.std() + 1e-6)


def phantom_hu(index: int, seed: int = 0, cube: int = 16) -> tuple[np.ndarray, dict]:
    """One nodule cube in Hounsfield units, and a dict describing it."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), GENERATOR_VERSION]))
    s = cube
    pts = voxel_grid(s)  # voxel-centre coordinates in mm, origin at the cube centre
    hu = parenchyma_hu(s, rng)

    category = int(rng.choice(len(CATEGORIES), p=CATEGORY_WEIGHTS))
    attachment = int(rng.choice(len(ATTACHMENTS), p=(0.55, 0.25, 0.2)))
    radius = float(np.clip(rng.lognormal(np.log(3.2), 0.35), 1.8, s * 0.38))
    centre = rng.uniform(-1.5, 1.5, size=3).astype(np.float32)

    paint_vessels(hu, pts, rng)
    if attachment == 2:
        paint_vessel_through(hu, pts, centre, rng)
    if attachment == 1:
        paint_pleura(hu, pts, centre, lambda normal: radius, rng)

    # nodule: union of ellipsoids with an irregular margin
    dist = _lobulated_distance(pts, centre, radius, rng)
    if category == 0:  # solid
        paint(hu, dist, 0.0, rng.uniform(-10, 60))
    elif category == 1:  # part-solid: GGO halo, solid core
        paint(hu, dist, 0.0, rng.uniform(-650, -450))
        core = _lobulated_distance(pts, centre + rng.uniform(-0.5, 0.5, 3), radius * rng.uniform(0.3, 0.6), rng)
        paint(hu, core, 0.0, rng.uniform(-10, 50))
    elif category == 2:  # ground-glass with mottled texture
        mottle = ndimage.gaussian_filter(rng.standard_normal((s, s, s)).astype(np.float32), 1.0)
        inside = soft_inside(dist)
        hu[:] = hu * (1 - inside) + inside * (rng.uniform(-700, -450) + 60.0 * mottle / (mottle.std() + 1e-6))
    else:  # calcified
        paint(hu, dist, 0.0, rng.uniform(0, 60))
        eccentric = rng.uniform(-0.5, 0.5, 3) * radius * (rng.random() < 0.5)
        calc = norm3(pts - (centre + eccentric)) - radius * rng.uniform(0.3, 0.7)
        paint(hu, calc, 0.0, rng.uniform(300, 1000))

    hu = finish_hu(hu, rng)
    volume = float((dist < 0).sum())
    info = {
        "category": category,
        "attachment": attachment,
        "diameter_mm": float(2.0 * (3.0 * volume / (4.0 * np.pi)) ** (1 / 3)),
    }
    return hu.astype(np.float32), info


def generate_phantoms(n: int = 2100, seed: int = 0, cube: int = 16) -> PhantomSet:
    """Generate ``n`` normalised phantom cubes (a few seconds for 2100)."""
    if n <= 0:
        raise ValueError(f"n: expected a positive number of cubes, received {n!r}")
    cubes = np.empty((n, cube, cube, cube), dtype=np.float32)
    category = np.empty(n, dtype=np.int64)
    attachment = np.empty(n, dtype=np.int64)
    diameter = np.empty(n, dtype=np.float32)
    for i in range(n):
        signals.check()  # a stop request abandons the set (a few ms per cube)
        hu, info = phantom_hu(i, seed, cube)
        cubes[i] = normalize_hu(hu)
        category[i], attachment[i], diameter[i] = info["category"], info["attachment"], info["diameter_mm"]
    return PhantomSet(cubes, category, attachment, diameter)


def load_phantoms(n: int = 2100, seed: int = 0, cube: int = 16, cache: bool = True) -> PhantomSet:
    """:func:`generate_phantoms`, cached on disk by ``(n, seed, cube, generator version)`` and built once
    however many processes ask at once (:func:`gmmkit.data.cache.cached_build`)."""
    if not cache:
        return generate_phantoms(n, seed, cube)
    path = cache_dir() / f"phantoms-{n}-{seed}-{cube}-{key(n, seed, cube, GENERATOR_VERSION)}.npz"
    return cached_build(path, lambda: generate_phantoms(n, seed, cube), _read, _write)[0]


def _read(path: Path) -> PhantomSet | None:
    """The set at ``path``, None when there is none; raises when the file cannot be read (it is built again)."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as f:
        return PhantomSet(f["cubes"], f["category"], f["attachment"], f["diameter_mm"])


def _write(data: PhantomSet, path: Path) -> None:
    atomic_savez(
        path, cubes=data.cubes, category=data.category, attachment=data.attachment, diameter_mm=data.diameter_mm
    )


def unit_vector(rng: np.random.Generator) -> np.ndarray:
    """A random direction: a float32 unit 3-vector."""
    v = rng.standard_normal(3).astype(np.float32)
    return v / np.linalg.norm(v)


def norm3(v: np.ndarray) -> np.ndarray:
    """Euclidean norm over the last axis of length 3 (much faster than np.linalg.norm(axis=-1) here)."""
    return np.sqrt(v[..., 0] * v[..., 0] + v[..., 1] * v[..., 1] + v[..., 2] * v[..., 2])


def tube_distance(pts: np.ndarray, point: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Distance (mm) of each point to the line through ``point`` along the unit ``direction``."""
    rel = pts - point
    along = rel @ direction
    return norm3(rel - along[..., None] * direction)


def soft_inside(dist: np.ndarray, width: float = 0.5) -> np.ndarray:
    """Fraction of a voxel inside a surface given its signed distance (mm): partial volume."""
    return 1.0 / (1.0 + np.exp(np.clip(dist / width, -30, 30)))


def paint(hu: np.ndarray, dist: np.ndarray, radius: float, value, width: float = 0.5) -> None:
    """Blend ``value`` into ``hu`` where ``dist < radius``, with a partial-volume margin ``width`` mm wide."""
    inside = soft_inside(dist - radius, width)
    hu *= 1 - inside
    hu += inside * value


def _lobulated_distance(pts: np.ndarray, centre: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Approximate signed distance (mm) to a union of 1 to 4 ellipsoids with an irregular margin."""
    s = pts.shape[0]
    dist = np.full(pts.shape[:3], np.inf, dtype=np.float32)
    for lobe in range(int(rng.integers(1, 5))):
        offset = np.zeros(3) if lobe == 0 else unit_vector(rng) * radius * rng.uniform(0.4, 0.8)
        r = radius * (1.0 if lobe == 0 else rng.uniform(0.45, 0.75))
        axes = r * rng.uniform(0.75, 1.25, 3)
        rot = np.linalg.qr(rng.standard_normal((3, 3)))[0]
        local = (pts - (centre + offset)) @ rot
        d = (norm3(local / axes) - 1.0) * r
        dist = np.minimum(dist, d.astype(np.float32))
    margin = ndimage.gaussian_filter(rng.standard_normal((s, s, s)).astype(np.float32), 1.2)
    return dist + rng.uniform(0.1, 0.6) * radius * margin / (margin.std() + 1e-6)
