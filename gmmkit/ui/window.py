"""A CT window picker: a preset (lung, mediastinum, the model's [-1000, 400] HU) or any width and level in HU,
as three linked widgets. Choosing a preset sets width and level; moving width or level shows the preset they
match, or none. The numbers are :mod:`gmmkit.ui.sections`'."""

from __future__ import annotations

from typing import Callable

import ipywidgets as W

from . import sections as geo


class WindowPicker:
    """``preset``, ``width`` and ``level`` widgets starting at ``window`` (a preset name or (width, level) in HU);
    ``on_change()`` is called whenever the window changes."""

    def __init__(self, window: str | tuple, on_change: Callable[[], None]):
        width, level = geo.window_of(window) if isinstance(window, str) else window
        self.on_change = on_change
        self._quiet = False
        self.preset = W.ToggleButtons(
            options=list(geo.WINDOWS),
            value=geo.preset_of(width, level),
            description="window",
            style={"button_width": "96px"},
        )
        self.preset.add_class("gmmkit-window")
        slider = dict(step=10.0, continuous_update=False, layout=W.Layout(width="300px"))
        self.width = W.FloatSlider(value=width, min=1.0, max=4000.0, description="W (HU)", **slider)
        self.level = W.FloatSlider(value=level, min=-1400.0, max=1000.0, description="L (HU)", **slider)
        self.preset.observe(self._on_preset, names="value")
        self.width.observe(self._on_width_or_level, names="value")
        self.level.observe(self._on_width_or_level, names="value")

    @property
    def range(self) -> tuple[float, float]:
        """The window as (low, high) HU."""
        w, c = float(self.width.value), float(self.level.value)
        return c - w / 2.0, c + w / 2.0

    def set(self, window: str | tuple) -> None:
        """A preset name or (width, level) in HU."""
        width, level = geo.window_of(window) if isinstance(window, str) else (float(window[0]), float(window[1]))
        geo.window_range(width, level)  # checks it
        self._quiet = True
        try:
            self.width.value, self.level.value = width, level
            self.preset.value = geo.preset_of(width, level)
        finally:
            self._quiet = False
        self.on_change()

    def _on_preset(self, change) -> None:
        if not self._quiet and change["new"] is not None:
            self.set(change["new"])

    def _on_width_or_level(self, _change) -> None:
        if not self._quiet:
            self._quiet = True
            try:
                self.preset.value = geo.preset_of(self.width.value, self.level.value)
            finally:
                self._quiet = False
            self.on_change()
