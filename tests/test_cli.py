"""Bad input on the command line: one line naming the flag, field or file, exit status 2, nothing written."""
import numpy as np
import pytest

from gmmkit.cli import main


@pytest.mark.parametrize("argv,named", [
    (["train", "--components", "0"], "--components"),
    (["train", "--cube", "8"], "--cube"),
    (["train", "--workers", "64"], "--workers"),
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--dataset", "cubes.csv"], "--dataset"),
    (["sweep", "--workers", "2,4"], "--workers"),
    (["sweep", "--strategies", "strong,fast"], "--strategies"),
    (["bench", "--json", "out.txt"], "--json"),
    (["prepare-luna", "--scans", "x", "--annotations", "a.csv", "--out", "cubes.txt"], "--out"),
])
def test_bad_flags_name_the_flag_and_exit_2(argv, named, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_unknown_strategy_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--strategy", "fast"])
    assert exc.value.code == 2 and "--strategy" in capsys.readouterr().err


@pytest.mark.parametrize("cubes,problem", [
    (np.full((4, 16, 16, 16), np.nan, np.float32), "non-finite"),
    (np.zeros((4, 16, 16), np.float32), "shape (N, S, S, S)"),
    (np.zeros((4, 8, 8, 8), np.float32), "receptive field"),
])
def test_a_bad_dataset_names_the_file(cubes, problem, tmp_path, capsys):
    path = tmp_path / "cubes.npz"
    np.savez(path, cubes=cubes)
    assert main(["train", "--dataset", str(path), "--val-size", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "cubes.npz" in err and problem in err
    assert not (tmp_path / "run").exists()


def test_a_pickled_dataset_is_refused(tmp_path, capsys):
    path = tmp_path / "cubes.npz"
    np.savez(path, cubes=np.array([{"evil": 1}], dtype=object))
    assert main(["train", "--dataset", str(path), "--val-size", "1", "--out", str(tmp_path / "run")]) == 2
    assert "cubes.npz" in capsys.readouterr().err
