"""Data sources, all ending as normalised nodule cubes: LIDC-IDRI's nodules (the default), the synthetic
phantoms, LUNA16 scans and DICOM series, and the ``cubes.npz`` format that holds them (:mod:`.cubes`)."""

from .cubes import CubeSet
from .intensity import AIR_HU, HU_WINDOW, normalize_hu
from .phantoms import CATEGORIES, PhantomSet, generate_phantoms, load_phantoms
from .sources import Split, load_cubes, load_split

__all__ = [
    "AIR_HU",
    "CATEGORIES",
    "CubeSet",
    "HU_WINDOW",
    "PhantomSet",
    "Split",
    "generate_phantoms",
    "load_cubes",
    "load_phantoms",
    "load_split",
    "normalize_hu",
]
