"""Hounsfield units for a LIDC nodule: the readers' shape, intensities modelled from their ratings.

LIDC's annotation database holds no image, so the voxel values are modelled, in the same lung as the
synthetic phantoms (:mod:`gmmkit.data.phantoms`: parenchyma, vessels, pleura, the scanner's blur and noise,
built by the same functions) and normalised by the one HU window (:func:`gmmkit.data.intensity.normalize_hu`).
What the readers said decides what is painted inside their consensus shape (medians over the readers):

=====================  =====================================  ===============================================
readers' rating        painted                                 where the HU range comes from
=====================  =====================================  ===============================================
texture 4-5 (solid)    soft tissue, -10 to +60 HU              soft tissue +25 to +60 HU, blood +45 to +65 HU
                                                               [1, 2]; the 32 densest voxels of solid malignant
                                                               nodules averaged 92 +- 18 HU [3]
texture 3 (part-solid) a ground-glass rim, -650 to -450 HU,    solid components of ground-glass nodules are
                       around a soft-tissue core (-10 to       taken from -160 HU (the usual threshold) or
                       +50 HU) 40 to 70 % of the depth in      -400 HU [4]; ground-glass parts measured about
                                                               -675 to -560 HU [5]
texture 1-2            ground glass, -700 to -450 HU with      pure ground-glass lesions of 1 cm or less had
(ground-glass)         a mottled texture                       mean CT values of -600 HU or less [6]; the
                                                               ground-glass parts of [5]
calcification 1-5      calcium, +300 to +1000 HU, in the       nodules of 164 HU or more were calcified, hence
(median < 6: at least  readers' pattern: popcorn (foci),       benign [3, 7]
half the readers saw   laminated (a shell), solid (all),
calcium)               non-central (eccentric), central
internal structure     a central core of fluid (0 to +20 HU),  water 0 HU by the scale's definition, fat -50 to
2, 3, 4                fat (-100 to -50 HU) or air (-1000 to   -100 HU, air -1000 HU [2]
                       -950 HU)
margin 1-5             partial-volume width of the surface:    a modelling choice
                       0.9 mm (poorly defined) to 0.3 mm
                       (sharp)
=====================  =====================================  ===============================================

[1] University of Vermont CT tutorial, "Hounsfield units", https://uvm.edu/~rchawla/series_home/ct/ct3.html
[2] M. Prokop, *Spiral and Multislice Computed Tomography of the Body*, Thieme 2003, as tabulated at
    http://radclass.mudr.org/content/hounsfield-units-scale-hu-ct-numbers (lung parenchyma in inspiration
    -850 to -910 HU, fat -50 to -100, water 0, blood 45 to 65)
[3] S. S. Siegelman et al., "CT of the solitary pulmonary nodule", AJR 135(1):1-13, 1980
[4] J. H. Lee et al., "High versus low attenuation thresholds to determine the solid component of
    ground-glass opacity nodules", PLoS ONE 13(10):e0205490, 2018
[5] H. Wang et al., "Differentiating preinvasive from invasive lung adenocarcinoma appearing as part-solid
    ground-glass nodule using CT value and solid-part diameter", Iran J Radiol 15(1):e61846, 2018
[6] https://pmc.ncbi.nlm.nih.gov/articles/PMC3388248 (Fig. 4)
[7] S. S. Siegelman et al., "Solitary pulmonary nodules: CT assessment", Radiology 160(2):307-312, 1986

The lung around the nodule is the phantoms' (parenchyma -850 +- 30 HU; -850 to -910 HU in inspiration
[2]). LIDC does not say which nodules touch the pleura or a vessel, so the phantoms' mix is
kept: 55 % isolated, 25 % against a chest wall, 20 % with a vessel through the centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .lidc_db import CALCIFICATION_ABSENT
from .phantoms import (
    CATEGORIES,
    finish_hu,
    norm3,
    paint,
    paint_pleura,
    paint_vessel_through,
    paint_vessels,
    parenchyma_hu,
    soft_inside,
    voxel_grid,
)

ATTACHMENT_WEIGHTS = (0.55, 0.25, 0.2)  # isolated, pleura, vessel: the phantoms' mix
SOLID_HU = (-10.0, 60.0)
CORE_HU = (-10.0, 50.0)
GROUND_GLASS_RIM_HU = (-650.0, -450.0)
GROUND_GLASS_HU = (-700.0, -450.0)
CALCIUM_HU = (300.0, 1000.0)
INTERNAL_HU = {2: (0.0, 20.0), 3: (-100.0, -50.0), 4: (-1000.0, -950.0)}  # fluid, fat, air
POPCORN, LAMINATED, SOLID_CALCIUM, NON_CENTRAL, CENTRAL = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class Appearance:
    """What the readers' ratings say a nodule looks like."""

    category: int  # index into gmmkit.data.phantoms.CATEGORIES: solid, part-solid, ground-glass, calcified
    calcium_pattern: int  # 1 popcorn ... 5 central, 6 none
    internal_structure: int  # 1 soft tissue, 2 fluid, 3 fat, 4 air
    margin: float  # 1 poorly defined ... 5 sharp


def appearance(
    texture: np.ndarray, calcification: np.ndarray, internal_structure: np.ndarray, margin: np.ndarray
) -> Appearance:
    """The appearance from every reader's ratings (one entry per reader).

    Texture: median below 2.5 ground-glass, below 3.5 part-solid, else solid. Calcified when the median
    calcification rating is below 6 (absent), i.e. at least half the readers saw calcium; the pattern is
    the one most of those readers chose (the lowest code on a tie). Internal structure: the median, rounded
    down.
    """
    calcification = np.asarray(calcification)
    t = float(np.median(texture))
    category = CATEGORIES.index("ground-glass" if t < 2.5 else "part-solid" if t < 3.5 else "solid")
    pattern = CALCIFICATION_ABSENT
    if float(np.median(calcification)) < CALCIFICATION_ABSENT:
        category = CATEGORIES.index("calcified")
        seen = calcification[calcification != CALCIFICATION_ABSENT]
        pattern = int(np.bincount(seen).argmax())
    return Appearance(
        category=category,
        calcium_pattern=pattern,
        internal_structure=int(np.floor(np.median(internal_structure))),
        margin=float(np.median(margin)),
    )


def margin_width(margin: float) -> float:
    """Partial-volume width of the nodule's surface in mm: 0.3 for a sharp margin (5), 0.9 for a poorly
    defined one (1)."""
    return 0.3 + 0.15 * (5.0 - float(np.clip(margin, 1.0, 5.0)))


def nodule_hu(sdf_mm: np.ndarray, look: Appearance, rng: np.random.Generator, spacing_mm: float = 1.0) -> np.ndarray:
    """A cube in HU: the phantoms' lung with the nodule whose signed distance field (mm, negative inside,
    axes z, y, x, centred) is ``sdf_mm``, painted as ``look`` says. Deterministic in ``rng``."""
    s = sdf_mm.shape[0]
    pts = voxel_grid(s, spacing_mm)
    sdf = sdf_mm.astype(np.float32)
    inside = sdf < 0
    depth = float(max(-sdf.min(), spacing_mm / 2))  # the deepest point's distance to the surface
    hu = parenchyma_hu(s, rng, spacing_mm)
    attachment = int(rng.choice(len(ATTACHMENT_WEIGHTS), p=ATTACHMENT_WEIGHTS))
    paint_vessels(hu, pts, rng)
    centre = np.zeros(3, dtype=np.float32)
    if attachment == 2:
        paint_vessel_through(hu, pts, centre, rng)
    if attachment == 1:
        paint_pleura(hu, pts, centre, lambda normal: float((pts[inside] @ normal).max()) if inside.any() else 0.0, rng)

    width = margin_width(look.margin)
    category = CATEGORIES[look.category]
    if category == "ground-glass":
        mottle = ndimage.gaussian_filter(rng.standard_normal((s, s, s)).astype(np.float32), 1.0 / spacing_mm)
        part = soft_inside(sdf, width)
        hu[:] = hu * (1 - part) + part * (rng.uniform(*GROUND_GLASS_HU) + 60.0 * mottle / (mottle.std() + 1e-6))
    elif category == "part-solid":
        paint(hu, sdf, 0.0, rng.uniform(*GROUND_GLASS_RIM_HU), width)
        paint(hu, sdf + depth * rng.uniform(0.4, 0.7), 0.0, rng.uniform(*CORE_HU), width)
    else:  # solid, and the soft tissue around calcium
        paint(hu, sdf, 0.0, rng.uniform(*SOLID_HU), width)
    if look.internal_structure in INTERNAL_HU:
        paint(hu, sdf + depth * rng.uniform(0.5, 0.7), 0.0, rng.uniform(*INTERNAL_HU[look.internal_structure]), width)
    if category == "calcified":
        _paint_calcium(hu, pts, sdf, depth, look.calcium_pattern, rng)
    return finish_hu(hu, rng, spacing_mm).astype(np.float32)


def _paint_calcium(
    hu: np.ndarray, pts: np.ndarray, sdf: np.ndarray, depth: float, pattern: int, rng: np.random.Generator
) -> None:
    """Calcium inside the nodule in one of LIDC's five patterns."""
    value = rng.uniform(*CALCIUM_HU)
    deep = np.argwhere(sdf < -0.3 * depth)  # voxels well inside, where eccentric calcium may sit
    if len(deep) == 0:
        deep = np.argwhere(sdf == sdf.min())
    if pattern == SOLID_CALCIUM:  # the whole nodule
        paint(hu, sdf + 0.3, 0.0, value, 0.3)
    elif pattern == CENTRAL:
        paint(hu, sdf + depth * rng.uniform(0.4, 0.7), 0.0, value, 0.3)
    elif pattern == LAMINATED:  # a shell halfway in, around a central nidus
        shell = np.abs(sdf + depth * rng.uniform(0.35, 0.6)) - rng.uniform(0.4, 0.7)
        paint(hu, shell, 0.0, value, 0.3)
        paint(hu, sdf + depth * 0.85, 0.0, value, 0.3)
    elif pattern == NON_CENTRAL:  # one eccentric focus
        spot = pts[tuple(deep[rng.integers(len(deep))])]
        paint(hu, norm3(pts - spot) - depth * rng.uniform(0.3, 0.5), 0.0, value, 0.3)
    else:  # popcorn: several small foci
        for _ in range(int(rng.integers(3, 7))):
            spot = pts[tuple(deep[rng.integers(len(deep))])]
            paint(hu, norm3(pts - spot) - rng.uniform(0.6, 1.2), 0.0, value, 0.3)
