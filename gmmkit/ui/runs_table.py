"""The dashboard's runs table: one row per run, sorted by a click on any column's header, with a checkbox
per run that shows or hides its curves on the loss plot. The rows come from :func:`gmmkit.ui.runs.table_rows`."""

from __future__ import annotations

import html
from typing import Callable, Optional

import ipywidgets as W

from .format import format_number, format_seconds
from .runs import COLUMNS, sort_rows

WIDTHS = {
    "run": "120px",
    "strategy": "70px",
    "workers": "36px",
    "hosts": "80px",
    "lr": "64px",
    "batch_size": "50px",
    "exact": "50px",
    "status": "92px",
    "epochs": "56px",
    "best_val_loss": "72px",
    "time_to_target_s": "104px",
    "efficiency": "76px",
    "restarts": "64px",
}


def cell_text(key: str, value) -> str:
    """A table cell as text: seconds, percentages and losses formatted, missing values as "-"."""
    if value is None:
        return "-"
    if key == "time_to_target_s":
        return format_seconds(value)
    if key == "efficiency":
        return format_number(100 * value, ".1f") + " %"
    if key in ("best_val_loss", "lr"):
        return format_number(value)
    if key == "exact":
        return "yes" if value else "no"
    return str(value)


class RunsTable:
    """The widget: ``set_rows(rows)`` fills it, :meth:`sort_by` (and a header click) orders it, and
    ``on_visible(key, visible)`` is called when a run's checkbox changes."""

    def __init__(self, on_visible: Optional[Callable[[int, bool], None]] = None, columns=COLUMNS):
        self.columns = tuple(columns)
        self.on_visible = on_visible
        self.sort_key: Optional[str] = None
        self.descending = False
        self.rows: list[dict] = []
        self.visible: dict[int, bool] = {}
        self._checks: dict[int, W.Checkbox] = {}
        self._cells: dict[tuple, W.HTML] = {}  # reused: a re-render only changes values and order
        self.headers = {
            key: W.Button(
                description=title,
                tooltip=f"sort by {title}",
                style={"font_size": "12px"},
                layout=W.Layout(width=WIDTHS.get(key, "80px"), padding="0px 2px"),
            )
            for key, title in self.columns
        }
        for key, button in self.headers.items():
            button.add_class("gmmkit-runs-sort")
            button.on_click(lambda _b, key=key: self.sort_by(key, toggle=True))
        self._show_header = W.HTML("<b title='show the run on the loss plot'>show</b>")
        self.grid = W.GridBox(
            layout=W.Layout(
                grid_template_columns="34px " + " ".join(WIDTHS.get(k, "80px") for k, _ in self.columns),
                grid_gap="2px 4px",
            )
        )
        self.empty = W.HTML(
            "<i>runs appear here as they start, and runs already in the output folder at once: "
            "click a header to sort</i>"
        )
        self.widget = W.VBox([self.grid, self.empty])
        self.widget.add_class("gmmkit-runs")
        self._render()

    def set_rows(self, rows: list[dict]) -> None:
        self.rows = list(rows)
        self._render()

    def sort_by(self, key: str, descending: Optional[bool] = None, toggle: bool = False) -> None:
        """Order the rows by column ``key``; ``toggle`` (a header click) flips the order on a second click."""
        if key not in dict(self.columns):
            raise ValueError(f"sort key: expected one of {', '.join(k for k, _ in self.columns)}, received {key!r}")
        if toggle:
            descending = (not self.descending) if key == self.sort_key else False
        self.sort_key, self.descending = key, bool(descending)
        self._render()

    def ordered(self) -> list[dict]:
        """The rows in the order shown."""
        if self.sort_key is None:
            return list(self.rows)
        return sort_rows(self.rows, self.sort_key, self.descending)

    def _check(self, key: int) -> W.Checkbox:
        if key not in self._checks:
            box = W.Checkbox(
                value=self.visible.get(key, True),
                indent=False,
                layout=W.Layout(width="30px"),
                tooltip="show this run's curves",
            )
            box.observe(lambda change, key=key: self._toggled(key, change["new"]), names="value")
            self._checks[key] = box
        return self._checks[key]

    def _toggled(self, key: int, visible: bool) -> None:
        self.visible[key] = visible
        if self.on_visible is not None:
            self.on_visible(key, visible)

    def _render(self) -> None:
        for key, title in self.columns:
            mark = (" ▼" if self.descending else " ▲") if key == self.sort_key else ""
            self.headers[key].description = title + mark
        children = [self._show_header, *self.headers.values()]
        for row in self.ordered():
            children.append(self._check(row["key"]))
            for key, _title in self.columns:
                style = (
                    "color:#b00020"
                    if key == "status" and row.get("status") in ("failed", "diverged", "interrupted")
                    else ""
                )
                value = (
                    f"<span class='gmmkit-cell-{key}' style='{style}'>"
                    f"{html.escape(cell_text(key, row.get(key)))}</span>"
                )
                cell = self._cells.setdefault((row["key"], key), W.HTML())
                if cell.value != value:
                    cell.value = value
                children.append(cell)
        self.grid.children = children
        self.empty.layout.display = "none" if self.rows else None

    def text(self) -> str:
        """The table as plain text, one line per row in the order shown (for tests and logs)."""
        return "\n".join(" | ".join(cell_text(k, r.get(k)) for k, _ in self.columns) for r in self.ordered())
