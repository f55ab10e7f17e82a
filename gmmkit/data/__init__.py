"""Data sources: synthetic phantoms, gmmkit .npz files, and the shared HU normalisation."""
from .datasets import DatasetError, Split, load_cubes, load_split
from .intensity import HU_WINDOW, normalize_hu
from .phantoms import CATEGORIES, PhantomSet, generate_phantoms, load_phantoms

__all__ = ["CATEGORIES", "DatasetError", "HU_WINDOW", "PhantomSet", "Split", "generate_phantoms",
           "load_cubes", "load_phantoms", "load_split", "normalize_hu"]
