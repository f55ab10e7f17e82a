"""The slice viewer of a notebook: a validation cube beside the model's estimate of it, as a CT viewer shows it.

Three orthogonal planes at once (axial, coronal, sagittal) with linked crosshairs: a click in one plane moves
the other two, and a slider per plane moves its slice. Input and estimate in greys through one CT window
(presets: lung, mediastinum, the model's [-1000, 400] HU; or any width and level), the difference on a
diverging scale centred on 0 HU. Each Gaussian's section by a plane is drawn as its 1- and 2-sigma ellipses,
more opaque for heavier components, with a table of the heaviest. An epoch slider shows the same cube at
every epoch the run kept (0, 1, 2, 5, 10, 20, ... and the latest), also while it trains; a 3D view shows both
cubes' isosurfaces under one camera; PNG and HTML buttons (and :meth:`SliceViewer.export`) save the view.

The numbers come from :class:`~gmmkit.ui.inspector.Inspector`, the geometry from :mod:`gmmkit.ui.sections`,
the figures from :mod:`gmmkit.plots.slices` and :mod:`gmmkit.plots.volume`. Every control calls a plain
method (:meth:`show`, :meth:`click`, :meth:`set_window`, :meth:`set_epoch`), which is what the tests call.
"""

from __future__ import annotations

import html
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import ipywidgets as W
import numpy as np

from .. import plots
from ..data.intensity import denormalize
from ..plots import slices
from ..plots import volume as volume_plots
from . import sections as geo
from .format import components_html, facts_html
from .inspector import Inspector
from .window import WindowPicker

PLANES = slices.PLANES


class SliceViewer:
    """Input, estimate and difference of one validation cube in three planes, at any kept epoch of a run.

    ``SliceViewer("runs/demo")`` opens a run directory (any: from a shell, a notebook or a cluster). Options:
    ``sample`` (validation cube), ``position`` (the crosshair, voxel indices along the axial, coronal and
    sagittal axes; default the centre), ``window`` (a preset name of :data:`gmmkit.ui.sections.WINDOWS` or
    (width, level) in HU), ``volume`` (add the 3D view), ``export_dir`` (where the buttons save).
    :meth:`follow` keeps up with a run that is training.
    """

    def __init__(
        self,
        run: Any = None,
        sample: int = 0,
        position: Optional[Sequence[int]] = None,
        window: str | tuple = "lung",
        volume: bool = True,
        max_samples: Optional[int] = 32,
        min_refresh_s: float = 2.0,
        export_dir: str = "views",
    ):
        self.max_samples, self.min_refresh_s, self.export_dir = max_samples, min_refresh_s, Path(export_dir)
        self.inspector: Optional[Inspector] = None
        self.position = (0, 0, 0)
        self.last_export: Optional[Path] = None
        self._lock = threading.RLock()
        self._following: Optional[str] = None
        self._last_refresh = 0.0
        self._worker: Optional[threading.Thread] = None
        self._wanted: Optional[str] = None
        self._wake = threading.Event()
        self._quiet = False
        self._initial = (sample, position)

        self.sample = W.Dropdown(options=[("-", 0)], value=0, description="cube", layout=W.Layout(width="330px"))
        self.epoch = W.SelectionSlider(
            options=[0], value=0, description="epoch", continuous_update=False, layout=W.Layout(width="360px")
        )
        self.epoch.add_class("gmmkit-epoch-slider")
        self.reload_button = W.Button(description="reload", icon="refresh", layout=W.Layout(width="84px"))
        self.png_button = W.Button(description="PNG", icon="download", layout=W.Layout(width="72px"))
        self.html_button = W.Button(description="HTML", icon="download", layout=W.Layout(width="78px"))
        self.windows = WindowPicker(window, on_change=self._apply_window)
        self.preset, self.width, self.level = self.windows.preset, self.windows.width, self.windows.level
        self.gaussians = W.Checkbox(value=True, description="Gaussians (1 and 2 sigma)", indent=False)
        self.sliders = {
            p: W.IntSlider(value=0, min=0, max=1, description=p, continuous_update=True, layout=W.Layout(width="330px"))
            for p in PLANES
        }
        for s in self.sliders.values():
            s.add_class("gmmkit-slice-slider")
            s.observe(self._on_slider, names="value")
        self.facts = W.HTML(value="")
        self.info = W.HTML(value="<i>no checkpoint loaded</i>")
        self.components = W.HTML(value="")
        self.components.add_class("gmmkit-components")
        self.figure = slices.planes_figure()
        self.volume = volume_plots.volume_figure() if volume else None
        for trace in self.figure.data:
            trace.on_click(self._on_figure_click)
        self.sample.observe(self._on_sample, names="value")
        self.epoch.observe(self._on_epoch, names="value")
        self.gaussians.observe(lambda c: slices.set_gaussians_visible(self.figure, c["new"]), names="value")
        self.reload_button.on_click(lambda _b: self.refresh(force=True))
        self.png_button.on_click(lambda _b: self._export_in_background("png"))
        self.html_button.on_click(lambda _b: self._export_in_background("html"))
        parts = [
            W.HBox([self.sample, self.epoch, self.reload_button, self.png_button, self.html_button]),
            W.HBox([self.preset, self.gaussians]),
            W.HBox([self.width, self.level]),
            W.HBox(list(self.sliders.values())),
            self.facts,
            self.info,
            self.figure,
            self.components,
        ]
        if self.volume is not None:
            parts.append(self.volume)
        self.widget = W.VBox(parts)
        self.widget.add_class("gmmkit-slice-viewer")
        if run is not None:
            self.load(run)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # --- loading ------------------------------------------------------------------------------
    def load(self, run: Any) -> "SliceViewer":
        """Show a run directory (or an :class:`~gmmkit.ui.inspector.Inspector`) at its latest epoch."""
        inspector = run if isinstance(run, Inspector) else Inspector(run, max_samples=self.max_samples)
        with self._lock:
            self.inspector = inspector
            self._following = str(inspector.run.path) if inspector.run is not None else None
            size = inspector.size
            sample, position = self._initial
            self._quiet = True
            try:
                self.sample.options = [(inspector.label(i), i) for i in range(len(inspector))]
                self.sample.value = min(max(int(sample), 0), len(inspector) - 1)
                self._set_epochs()
                for s in self.sliders.values():
                    s.max = size - 1
                self._move_to(position if position is not None else (size // 2,) * 3)
            finally:
                self._quiet = False
            self._last_refresh = time.monotonic()
        self.redraw(volume=True)
        return self

    def _set_epochs(self) -> None:
        """The epoch slider's stops; it stays where it was unless it was at the latest (then it moves on)."""
        epochs = self.inspector.epochs()
        shown = self.inspector.epoch
        self.epoch.options = [(str(e), e) for e in epochs]
        self.epoch.value = shown if shown in epochs else epochs[-1]

    def refresh(self, force: bool = False) -> bool:
        """Look for a newer checkpoint and snapshots (at most every ``min_refresh_s`` unless ``force``)."""
        if self.inspector is None:
            return False
        now = time.monotonic()
        if not force and now - self._last_refresh < self.min_refresh_s:
            return False
        self._last_refresh = now
        with self._lock:
            changed = self.inspector.reload()
            self._quiet = True
            try:
                self._set_epochs()
            finally:
                self._quiet = False
        if changed or force:
            self.redraw(volume=True)
        return changed

    def follow(self, run: Any) -> None:
        """Keep showing ``run``'s latest checkpoint, loading and refreshing in a background thread (loading
        the model takes seconds the first time, and the caller, the dashboard's epoch handler, never waits)."""
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

    # --- what the controls do ---------------------------------------------------------------------
    def show(
        self,
        sample: Optional[int] = None,
        position: Optional[Sequence[int]] = None,
        epoch: Optional[int] = None,
        axis: Optional[str] = None,
        index: Optional[int] = None,
    ) -> None:
        """Move the controls (each one given) and redraw once. ``axis`` and ``index`` move one plane's slice."""
        self._quiet = True
        try:
            if sample is not None:
                self.sample.value = sample
            if epoch is not None:
                self.set_epoch(epoch, redraw=False)
            if position is not None:
                self._move_to(position)
            if axis is not None and index is not None:
                moved = list(self.position)
                moved[geo.axis_index(axis)] = int(index)
                self._move_to(moved)
        finally:
            self._quiet = False
        self.redraw(volume=sample is not None or epoch is not None)

    def click(self, plane: str, row: float, col: float) -> tuple:
        """A click at (``row``, ``col``) of ``plane``: the other two planes move there. Returns the crosshair."""
        if self.inspector is None:
            return self.position
        self._quiet = True
        try:
            self._move_to(geo.click_position(self.position, plane, row, col, self.inspector.size))
        finally:
            self._quiet = False
        self.redraw()
        return self.position

    def set_window(self, window: str | tuple) -> None:
        """A preset name (lung, mediastinum, model) or (width, level) in HU."""
        self.windows.set(window)

    def set_epoch(self, epoch: int, redraw: bool = True) -> None:
        """Show the weights of ``epoch`` (one of the epoch slider's stops)."""
        if self.inspector is None:
            return
        self.inspector.use_epoch(int(epoch))
        was, self._quiet = self._quiet, True
        try:
            self.epoch.value = int(epoch)
        finally:
            self._quiet = was
        if redraw:
            self.redraw(volume=True)

    def _move_to(self, position: Sequence[int]) -> None:
        size = self.inspector.size if self.inspector is not None else 1
        self.position = tuple(min(max(int(p), 0), size - 1) for p in position)
        for plane, value in zip(PLANES, self.position):
            self.sliders[plane].value = value

    @property
    def window(self) -> tuple[float, float]:
        """The CT window as (low, high) HU."""
        return self.windows.range

    # --- drawing ----------------------------------------------------------------------------
    def redraw(self, volume: bool = False) -> None:
        """Draw the current cube, epoch and crosshair (and the 3D view when ``volume``)."""
        if self.inspector is None:
            return
        with self._lock:
            insp = self.inspector
            s = insp.sample(int(self.sample.value))
            cubes_hu = denormalize(s.input, insp.hu_window), denormalize(s.density, insp.hu_window)
            diff_hu = cubes_hu[1] - cubes_hu[0]
            images, crosshairs, cuts = {}, {}, {}
            table = geo.components_table(s.alpha, s.mu, s.tril, s.size, top=len(s.alpha), spacing_mm=insp.spacing_mm)
            labels = {row["component"]: geo.describe_component(row) for row in table}
            top = float(np.max(s.alpha)) if s.alpha.size else 1.0
            for plane, index in zip(PLANES, self.position):
                images[plane] = [geo.slice_volume(v, plane, index) for v in (*cubes_hu, diff_hu)]
                crosshairs[plane] = geo.crosshair(self.position, plane)
                cuts[plane] = geo.gaussian_sections(s.alpha, s.mu, s.tril, plane, index, s.size)
                for cut in cuts[plane]:
                    cut["opacity"] = float(geo.weight_opacity(cut["alpha"], top))
            epoch = "initial weights" if s.epoch == 0 else f"epoch {s.epoch}" if s.epoch is not None else "weights"
            title = (
                f"validation cube {s.index} · {epoch} · crosshair (axial {self.position[0]}, "
                f"coronal {self.position[1]}, sagittal {self.position[2]}) · cube MSLE {s.loss:.4g}"
            )
            slices.update_planes(
                self.figure,
                images,
                crosshairs,
                s.size,
                self.window,
                geo.difference_range(diff_hu),
                sections=cuts,
                labels=labels,
                title=title,
            )
            if volume and self.volume is not None:
                sizes = 3.0 + 9.0 * np.sqrt(np.clip(s.alpha, 0, None) / top)
                volume_plots.update_volume(
                    self.volume, s.input, s.density, centres=geo.to_voxel(s.mu, s.size), sizes=sizes
                )
            self.components.value = components_html(table[:8], spacing_mm=insp.spacing_mm)
            self.facts.value = facts_html(insp.facts[s.index])
            self.info.value = html.escape(insp.describe())

    def _apply_window(self) -> None:
        lo, hi = self.window
        with self.figure.batch_update():
            self.figure.layout.coloraxis.cmin, self.figure.layout.coloraxis.cmax = lo, hi

    def image(self, plane: str = "axial") -> list:
        """The three images (input, estimate, difference, in HU) of ``plane`` as drawn now."""
        return [np.asarray(t.z) for t in slices.traces(self.figure, "image", plane)]

    def crosshair(self, plane: str) -> tuple[float, float]:
        """(row, column) where ``plane``'s crosshair is drawn now."""
        trace = slices.traces(self.figure, "crosshair", plane)[0]
        return float(trace.y[0]), float(trace.x[3])

    # --- export ------------------------------------------------------------------------------
    def export(self, path: str | Path, what: str = "slices") -> Path:
        """Save the view: ``.html`` (self-contained; the planes, and the 3D view when there is one) or ``.png``
        (``what``: ``slices`` or ``volume``; needs kaleido)."""
        path = Path(path)
        figures = {"slices": self.figure, "volume": self.volume}
        if what not in figures or figures[what] is None:
            raise ValueError(
                f"what: expected slices{' or volume' if self.volume is not None else ''}, received {what!r}"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".html":
            shown = [self.figure] + ([self.volume] if self.volume is not None else [])
            plots.write_html(shown, path, title=self.figure.layout.title.text or "gmmkit view")
        elif path.suffix.lower() == ".png":
            plots.write_png(figures[what], path, width=1200)
        else:
            raise ValueError(f"path: expected a file name ending in .png or .html, received {str(path)!r}")
        self.last_export = path
        return path

    def default_export_path(self, suffix: str) -> Path:
        insp = self.inspector
        run = insp.run.path.name if insp is not None and insp.run is not None else "weights"
        epoch = insp.epoch if insp is not None else 0
        return self.export_dir / f"{run}-cube{int(self.sample.value)}-epoch{epoch}.{suffix}"

    def _export_in_background(self, suffix: str) -> None:
        path = self.default_export_path(suffix)  # rendering a PNG starts Chromium: seconds, off the kernel's loop

        def work():
            try:
                self.export(path)
                self.info.value = f"saved {html.escape(str(path))}"
            except Exception as exc:
                self.info.value = f"<span style='color:#b00020'>export failed: {html.escape(str(exc))}</span>"

        threading.Thread(target=work, name="gmmkit-export", daemon=True).start()

    # --- widget events -------------------------------------------------------------------------
    def _on_slider(self, _change) -> None:
        if not self._quiet:
            self.position = tuple(int(self.sliders[p].value) for p in PLANES)
            self.redraw()

    def _on_figure_click(self, trace, points, _state) -> None:
        if points.point_inds and points.xs and isinstance(trace.meta, dict) and "plane" in trace.meta:
            if points.xs[0] is not None and points.ys[0] is not None:
                self.click(trace.meta["plane"], points.ys[0], points.xs[0])

    def _on_sample(self, _change) -> None:
        if not self._quiet:
            self.redraw(volume=True)

    def _on_epoch(self, change) -> None:
        if not self._quiet:
            self.set_epoch(change["new"])
