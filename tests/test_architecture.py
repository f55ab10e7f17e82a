"""docs/architecture.md's rules hold in the code (tests/support/architecture.py checks them), the checker finds
planted breaches, and the map names the owners the rules name."""

import re
import shutil

from conftest import ROOT
from support.architecture import LAYERS, OWNERS, violations


def test_the_package_keeps_the_architectures_rules():
    assert violations(ROOT / "gmmkit") == []


def _plant(path, text):
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")


def test_planted_breaches_are_each_found(tmp_path):
    tree = tmp_path / "gmmkit"
    shutil.copytree(ROOT / "gmmkit", tree, ignore=shutil.ignore_patterns("__pycache__"))
    _plant(tree / "model" / "conv.py", "\nfrom ..training import loop\n")  # upward
    _plant(tree / "training" / "loop.py", "\n\ndef f():\n    import horovod.tensorflow as hvd\n")  # 2nd owner
    _plant(tree / "data" / "cubes.py", "\nimport subprocess\n")  # a process started outside launch
    _plant(tree / "study" / "claims.py", "\nfrom ..parallel.launch import _die_with_parent\n")  # a private name
    (tree / "data" / "big.py").write_text("x = 1\n" * 401)
    found = violations(tree)
    expected = [
        r"gmmkit/model/conv\.py:\d+: imports gmmkit\.training\.loop \(training\) from model",
        r"gmmkit/training/loop\.py:\d+: imports horovod, which only gmmkit\.parallel\.backend_horovod may",
        r"gmmkit/data/cubes\.py:\d+: imports subprocess, which only gmmkit\.parallel\.launch may",
        r"gmmkit/study/claims\.py:\d+: imports the private _die_with_parent of gmmkit\.parallel\.launch",
        r"gmmkit/data/big\.py: 401 lines, over 400",
    ]
    for pattern in expected:
        assert any(re.match(pattern, line) for line in found), (pattern, found)
    assert len(found) == len(expected), found


def _doc_name(owner: str) -> str:
    """How the map writes an owner: ``model/`` for a package, ``parallel/distributed.py`` for a module."""
    rel = owner.removeprefix("gmmkit.").replace(".", "/")
    return rel + "/" if (ROOT / "gmmkit" / rel).is_dir() else rel + ".py"


def test_the_map_names_every_owner_and_unit():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (\w+)[^|]*\| ([^|]+) \|", text, re.M)}
    for library, owners in OWNERS.items():
        assert library in rows, f"docs/architecture.md has no row for {library} in its owners' table"
        assert set(re.findall(r"`([\w/.]+)`", rows[library])) == {_doc_name(o) for o in owners}, library
    for _, units in LAYERS:
        for unit in units:
            assert f"`{_doc_name(unit) if unit != 'gmmkit' else 'gmmkit/__init__.py'}`" in text, (
                f"docs/architecture.md does not name {unit}"
            )
