"""RunConfig: JSON round trip and errors that name the field."""

import json

import pytest

from gmmkit.config import ConfigError, RunConfig


def test_defaults_follow_the_paper():
    cfg = RunConfig().validate()
    assert (cfg.model.components, cfg.data.cube, cfg.train.batch_size) == (50, 16, 32)
    assert (cfg.train.lr, cfg.train.beta_1, cfg.train.beta_2, cfg.train.epsilon) == (0.00105, 0.9, 0.999, 1e-8)
    assert (cfg.train.epochs, cfg.data.size, cfg.data.val_size) == (400, 2100, 256)


def test_json_round_trip(tmp_path):
    cfg = RunConfig().replace(
        train={"strategy": "warmup", "workers": 4, "target_loss": None},
        data={"train_size": 100},
        out=str(tmp_path / "r"),
    )
    again = RunConfig.from_json(cfg.to_json())
    assert again == cfg
    elastic = cfg.replace(train={"strategy": "strong", "elastic": True, "min_workers": 2, "max_restarts": 5})
    assert RunConfig.from_json(elastic.to_json()) == elastic and elastic.train.max_restarts == 5
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    assert RunConfig.load(path) == cfg


@pytest.mark.parametrize(
    "raw,field",
    [
        ({"train": {"strategy": "bogus"}}, "train.strategy"),
        ({"train": {"lr": -1}}, "train.lr"),
        ({"train": {"lr": float("nan")}}, "train.lr"),
        ({"model": {"components": 0}}, "model.components"),
        ({"data": {"cube": 8}}, "data.cube"),
        ({"train": {"workers": 64, "batch_size": 32}}, "train.workers"),
        ({"train": {"epochs": "ten"}}, "train.epochs"),
        ({"data": {"colour": 1}}, "data.colour"),
        ({"extra": 1}, "extra"),
        ({"data": {"dataset": "cubes.csv"}}, "data.dataset"),
        ({"train": {"checkpoint_every": 0}}, "train.checkpoint_every"),
        ({"train": {"checkpoint_every": "0s"}}, "train.checkpoint_every"),
        ({"train": {"checkpoint_every": "every hour"}}, "train.checkpoint_every"),
        ({"train": {"checkpoint_every": 2.5}}, "train.checkpoint_every"),  # steps are whole: "2.5s" is seconds
        ({"train": {"elastic": "yes"}}, "train.elastic"),
        ({"train": {"elastic": True, "strategy": "weak", "workers": 2}}, "train.elastic"),
        ({"train": {"elastic": True, "strategy": "warmup"}}, "train.elastic"),
        ({"train": {"min_workers": 3, "workers": 2}}, "train.min_workers"),
        ({"train": {"min_workers": 0}}, "train.min_workers"),
        ({"train": {"max_restarts": -1}}, "train.max_restarts"),
    ],
)
def test_errors_name_the_field(raw, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        RunConfig.from_dict(raw)


@pytest.mark.parametrize(
    "value,interval",
    [
        (None, None),
        (200, ("steps", 200)),
        ("200", ("steps", 200)),
        ("30s", ("seconds", 30.0)),
        ("0.5s", ("seconds", 0.5)),
    ],
)
def test_checkpoint_every_is_steps_or_seconds_and_round_trips(value, interval):
    cfg = RunConfig().replace(train={"checkpoint_every": value})
    assert cfg.train.checkpoint_interval == interval
    assert RunConfig.from_json(cfg.to_json()) == cfg


def test_bad_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json"):
        RunConfig.load(path)
    with pytest.raises(ConfigError, match="missing.json"):
        RunConfig.load(tmp_path / "missing.json")
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="JSON object"):
        RunConfig.load(path)
