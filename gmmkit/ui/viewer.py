"""The slice viewer of a notebook: a validation cube beside the model's rendering of it, slice by slice.

One validation cube, the model's rendering of it and their difference, on one colour scale, with the
mixture's centres drawn on the slice; a 3D view shows isosurfaces of both. It reads a run directory's
latest checkpoint (:class:`~gmmkit.ui.inspector.Inspector`) and can reload it while the run is still
training. The figures are drawn by :mod:`gmmkit.plots.slices`; the geometry comes from the inspector.
"""
from __future__ import annotations

import html
import threading
import time
from typing import Any, Optional

import ipywidgets as W
import numpy as np

from ..plots import slices
from .inspector import AXES, Inspector, centres_on_slice, shared_range, slice_volume, to_voxel


class SliceViewer:
    """Input, rendered density and difference of one validation cube, slice by slice, from a checkpoint.

    ``SliceViewer("runs/demo")`` opens a run directory (its ``config.json`` and latest ``checkpoint.npz``;
    see :class:`gmmkit.ui.inspector.Inspector`). Controls: the axis (axial, coronal, sagittal = array axes 0, 1,
    2), the slice, and the validation cube; "reload" picks up a newer checkpoint, as :meth:`refresh` does
    from code and :meth:`follow` does for a run that is still training. ``volume=True`` adds the 3D view.
    """

    def __init__(self, run: Any = None, sample: int = 0, axis: str = "axial", index: Optional[int] = None,
                 volume: bool = True, max_samples: Optional[int] = 32, min_refresh_s: float = 2.0):
        self.max_samples = max_samples
        self.min_refresh_s = min_refresh_s
        self.inspector = None
        self._lock = threading.RLock()
        self._following: Optional[str] = None
        self._last_refresh = 0.0
        self._worker: Optional[threading.Thread] = None
        self._wanted: Optional[str] = None
        self._wake = threading.Event()
        self._quiet = False
        self.axis = W.ToggleButtons(options=list(AXES), value=axis, description="axis",
                                    style={"button_width": "80px"})
        self.slice = W.IntSlider(value=0, min=0, max=1, description="slice", continuous_update=True)
        self.slice.add_class("gmmkit-slice-slider")
        self.sample = W.Dropdown(options=[("-", 0)], value=0, description="sample", layout=W.Layout(width="230px"))
        self.reload_button = W.Button(description="reload", icon="refresh", layout=W.Layout(width="90px"))
        self.info = W.HTML(value="<i>no checkpoint loaded</i>")
        self.figure = slices.slice_figure()
        self.volume = slices.volume_figure() if volume else None
        self.axis.observe(self._on_control, names="value")
        self.slice.observe(self._on_control, names="value")
        self.sample.observe(self._on_sample, names="value")
        self.reload_button.on_click(lambda _b: self.refresh(force=True))
        parts = [W.HBox([self.axis, self.sample, self.reload_button]), self.slice, self.info, self.figure]
        if self.volume is not None:
            parts.append(self.volume)
        self.widget = W.VBox(parts)
        self.widget.add_class("gmmkit-slice-viewer")
        self._initial = (sample, index)
        if run is not None:
            self.load(run)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # --- loading ------------------------------------------------------------------------------
    def load(self, run: Any) -> "SliceViewer":
        """Show a run directory (or an :class:`~gmmkit.ui.inspector.Inspector`)."""
        inspector = run if isinstance(run, Inspector) else Inspector(run, max_samples=self.max_samples)
        with self._lock:
            self.inspector = inspector
            self._following = str(inspector.run.path) if inspector.run is not None else None
            size = inspector.size
            sample, index = self._initial
            self._quiet = True
            try:
                self.sample.options = [(f"validation cube {i}", i) for i in range(len(inspector))]
                self.sample.value = min(max(int(sample), 0), len(inspector) - 1)
                self.slice.max = size - 1
                self.slice.value = size // 2 if index is None else min(max(int(index), 0), size - 1)
            finally:
                self._quiet = False
            self._last_refresh = time.monotonic()
        self.redraw(volume=True)
        return self

    def refresh(self, force: bool = False) -> bool:
        """Reload the checkpoint if it changed (at most every ``min_refresh_s`` unless ``force``)."""
        if self.inspector is None:
            return False
        now = time.monotonic()
        if not force and now - self._last_refresh < self.min_refresh_s:
            return False
        self._last_refresh = now
        with self._lock:
            changed = self.inspector.reload()
        if changed or force:
            self.redraw(volume=True)
        return changed

    def follow(self, run: Any) -> None:
        """Keep showing ``run``'s latest checkpoint, loading and refreshing in a background thread.

        Loading the model takes a few seconds the first time (TensorFlow), so the caller (the dashboard's
        epoch handler) never waits for it.
        """
        self._wanted = str(run)
        self._wake.set()
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._follow_loop, name="gmmkit-slice-viewer", daemon=True)
            self._worker.start()

    def _follow_loop(self) -> None:
        while True:  # a daemon thread: it sleeps on the event between epochs and ends with the kernel
            self._wake.wait()
            self._wake.clear()
            wanted = self._wanted
            try:
                if wanted != self._following:
                    self.load(wanted)
                else:
                    self.refresh(force=True)
            except Exception as exc:  # a half-written run: say so, try again at the next epoch
                self.info.value = f"<span style='color:#b00020'>{html.escape(str(exc))}</span>"

    # --- drawing ----------------------------------------------------------------------------
    def show(self, sample: Optional[int] = None, axis: Optional[str] = None, index: Optional[int] = None) -> None:
        """Move the controls (each given one) and redraw once."""
        self._quiet = True
        try:
            if axis is not None:
                self.axis.value = axis
            if sample is not None:
                self.sample.value = sample
            if index is not None:
                self.slice.value = index
        finally:
            self._quiet = False
        self.redraw(volume=sample is not None)

    def redraw(self, volume: bool = False) -> None:
        """Draw the current sample, axis and slice (and the 3D view when ``volume``)."""
        if self.inspector is None:
            return
        with self._lock:
            s = self.inspector.sample(int(self.sample.value))
            axis, index = self.axis.value, int(self.slice.value)
            images = [slice_volume(v, axis, index) for v in (s.input, s.density, s.difference)]
            zrange = shared_range(s.input, s.density, s.difference)  # whole cube: stable while sliding
            centres = centres_on_slice(s.alpha, s.mu, axis, index, s.size)
            title = f"validation cube {s.index}, {axis} slice {index}/{s.size - 1}, cube MSLE {s.loss:.4g}"
            slices.update_slices(self.figure, *images, centres=centres, zrange=zrange, title=title,
                                       size=s.size)
            if volume and self.volume is not None:
                slices.update_volume(self.volume, s.input, s.density, centres=to_voxel(s.mu, s.size),
                                           alpha=s.alpha)
            self.info.value = html.escape(self.inspector.describe())

    def image(self) -> list:
        """The three slice images as drawn now (for tests and for saving)."""
        return [np.asarray(t.z) for t in self.figure.data if t.type == "heatmap"]

    def _on_control(self, _change) -> None:
        if not self._quiet:
            self.redraw()

    def _on_sample(self, _change) -> None:
        if not self._quiet:
            self.redraw(volume=True)
