"""The dashboard's run settings as widgets: strategy, workers (and whether the run is elastic), learning rate,
batch, target loss, epochs and exact mode, with the Start and Stop buttons, and the ``train`` fields of a
:class:`~gmmkit.config.RunConfig` they describe (:meth:`RunControls.fields`; the config checks them)."""

from __future__ import annotations

import ipywidgets as W

from ..config import TrainConfig
from ..strategies import STRATEGIES
from .format import parse_target


class RunControls:
    """Widgets set from ``train``; ``workers`` goes up to ``limit`` (a cluster's slots), said in its tooltip when
    that is below ``max_workers``. ``settings``: the widgets in columns of two; ``exact`` and the buttons (whose
    clicks the dashboard handles) stand apart."""

    def __init__(self, train: TrainConfig, limit: int, max_workers: int):
        style, layout = {"description_width": "88px"}, W.Layout(width="210px")
        common = dict(style=style, layout=layout)
        self.strategy = W.Dropdown(options=list(STRATEGIES), value=train.strategy, description="strategy", **common)
        self.workers = W.BoundedIntText(
            value=min(train.workers, limit),
            min=1,
            max=limit,
            description="workers (GPUs)",
            tooltip=f"at most {limit} (the cluster's slots)" if limit < max_workers else "",
            **common,
        )
        # elastic (train.elastic): a lost rank or host restarts the run on the rest; strong scaling only, as
        # TrainConfig says (the others' global batch grows with the workers), so the box is off for the others
        self.elastic = W.Checkbox(value=bool(train.elastic), description="elastic", indent=False)
        self.strategy.observe(lambda _change: self._elastic_allowed(), names="value")
        self._elastic_allowed()
        self.lr = W.FloatText(value=train.lr, description="lr", **common)
        self.batch = W.BoundedIntText(value=train.batch_size, min=1, max=1 << 16, description="batch", **common)
        target = "none" if train.target_loss is None else f"{train.target_loss:g}"
        self.target = W.Text(value=target, description="target loss", **common)
        self.epochs = W.BoundedIntText(value=train.epochs, min=1, max=100000, description="max epochs", **common)
        # exact mode (train.exact): the sequential path to the last bit on any number of workers
        self.exact = W.Checkbox(value=bool(train.exact), description="exact", indent=False)
        button = W.Layout(width="100px")
        self.start_button = W.Button(description="Start", button_style="success", icon="play", layout=button)
        self.stop_button = W.Button(
            description="Stop", button_style="danger", icon="stop", disabled=True, layout=button
        )
        self.settings = [
            W.VBox([self.strategy, self.workers, self.elastic]),
            W.VBox([self.lr, self.batch]),
            W.VBox([self.target, self.epochs]),
        ]

    def _elastic_allowed(self) -> None:
        """The elastic box is off, unticked and says why for a strategy other than strong."""
        strong = self.strategy.value == "strong"
        if not strong:
            self.elastic.value = False
        self.elastic.disabled = not strong
        self.elastic.tooltip = (
            "a lost rank or host: the run goes on from its last checkpoint on the hosts that answer"
            if strong
            else f"strong scaling only: {self.strategy.value}'s global batch grows with the workers, so fewer "
            "workers would change the run"
        )

    def fields(self) -> dict:
        """The ``train`` fields the widgets describe."""
        return {
            "strategy": self.strategy.value,
            "workers": int(self.workers.value),
            "lr": float(self.lr.value),
            "batch_size": int(self.batch.value),
            "target_loss": parse_target(self.target.value),
            "epochs": int(self.epochs.value),
            "exact": bool(self.exact.value),
            "elastic": bool(self.elastic.value),
            **({} if self.exact.value else {"micro_shards": None}),  # micro-shards belong to exact mode
        }
