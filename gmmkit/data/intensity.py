"""Hounsfield units to network input: the one normalisation used by every data source.

Synthetic phantoms and real CT (LUNA16, DICOM) both pass through :func:`normalize_hu`, so a model trained on
one sees the other in the same units. The window [-1000, 400] HU spans air to dense soft tissue and maps
linearly to [0, 1]: lung parenchyma (about -850 HU) lands near 0.11, a solid nodule (0 to +60 HU) near 0.7,
anything denser than 400 HU (calcium, bone) saturates at 1.
"""

from __future__ import annotations

import numpy as np

HU_WINDOW = (-1000.0, 400.0)
AIR_HU = -1000.0


def normalize_hu(hu: np.ndarray, window: tuple[float, float] = HU_WINDOW) -> np.ndarray:
    """Window ``hu`` to ``window`` and scale it linearly to float32 values in [0, 1]."""
    lo, hi = window
    if not hi > lo:
        raise ValueError(f"window: expected (low, high) with high > low, received {window!r}")
    hu = np.asarray(hu, dtype=np.float32)
    return np.clip((hu - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def denormalize(values: np.ndarray, window: tuple[float, float] = HU_WINDOW) -> np.ndarray:
    """Inverse of :func:`normalize_hu` inside the window (values in [0, 1] back to HU)."""
    lo, hi = window
    return (np.asarray(values, dtype=np.float32) * (hi - lo) + lo).astype(np.float32)
