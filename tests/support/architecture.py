"""The rules of ``docs/architecture.md``, read off the source with Python's ``ast`` (no module is imported).

Each rule is data here; :func:`violations` checks a package tree against all of them and returns one line per
breach, so a test can assert the real tree has none and that planted breaches are found.

* **Layers.** Every module belongs to a *unit* (a root module of the base, or a sub-package) and every unit
  to a layer. An import goes down the layers, or stays inside its unit; base modules may import each other.
* **Owners.** Each heavy library (and each way of starting a process) is imported by its owner modules only.
* **Size.** No module is longer than ``MAX_LINES`` lines.
* **Private names.** No module imports another module's ``_name`` or reads ``module._name``.

Imports inside functions count as much as those at the top: a lazy import is still an import.
"""

from __future__ import annotations

import ast
from pathlib import Path

MAX_LINES = 400

# Lowest first. A unit is a module or package name; a module belongs to the unit that is its longest prefix.
LAYERS = (
    (
        "base",
        (
            "gmmkit",
            "gmmkit.checks",
            "gmmkit.config",
            "gmmkit.errors",
            "gmmkit.files",
            "gmmkit.signals",
            "gmmkit.strategies",
            "gmmkit.timing",
            "gmmkit.machine",
            "gmmkit.model.config",
        ),
    ),
    ("model, data, plots", ("gmmkit.model", "gmmkit.data", "gmmkit.plots")),
    ("parallel", ("gmmkit.parallel",)),
    ("training", ("gmmkit.training",)),
    ("study, synthesis, cluster", ("gmmkit.study", "gmmkit.synthesis", "gmmkit.cluster")),
    ("ui", ("gmmkit.ui",)),
    ("commands", ("gmmkit.commands",)),
    ("entry points", ("gmmkit.cli", "gmmkit.ranks")),
    ("python -m gmmkit", ("gmmkit.__main__",)),
)

# library (top-level import name) -> the modules or packages that may import it
OWNERS = {
    "tensorflow": (
        "gmmkit.model",
        "gmmkit.training",
        "gmmkit.parallel.distributed",
        "gmmkit.parallel.backend_horovod",
        "gmmkit.parallel.backend_mpi",
    ),
    "keras": ("gmmkit.model", "gmmkit.training", "gmmkit.parallel.distributed"),
    "tf_keras": ("gmmkit.model.keras2",),  # the current lane's Keras 2 (README "Two lanes")
    "tensorboard": ("gmmkit.training.tensorboard",),
    "horovod": ("gmmkit.parallel.backend_horovod",),
    "mpi4py": ("gmmkit.parallel.backend_mpi",),
    "plotly": ("gmmkit.plots",),
    "kaleido": ("gmmkit.plots",),
    "ipywidgets": ("gmmkit.ui",),
    "anywidget": ("gmmkit.ui", "gmmkit.plots"),
    "SimpleITK": ("gmmkit.data.images",),
    "ipyparallel": ("gmmkit.cluster",),
    # processes: programs (mpirun, anything else) start in one module, Python worker pools in another
    "subprocess": ("gmmkit.parallel.launch",),
    "multiprocessing": ("gmmkit.data.pool",),
    "concurrent": ("gmmkit.data.pool",),
}
# os functions that start a process, owned like subprocess
PROCESS_CALLS = {
    "system",
    "popen",
    "fork",
    "forkpty",
    "execv",
    "execve",
    "execvp",
    "execvpe",
    "execl",
    "execle",
    "execlp",
    "execlpe",
    "spawnv",
    "spawnve",
    "spawnvp",
    "spawnvpe",
    "spawnl",
    "spawnle",
    "posix_spawn",
    "posix_spawnp",
}


def module_name(root: Path, path: Path) -> str:
    """``gmmkit/training/loop.py`` -> ``gmmkit.training.loop``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def unit_of(name: str) -> tuple[int, str]:
    """(layer index, unit) of a gmmkit module: the longest unit that is a prefix of its name."""
    best = None
    for index, (_, units) in enumerate(LAYERS):
        for unit in units:
            if _within(name, unit) and (best is None or len(unit) > len(best[1])):
                best = (index, unit)
    if best is None:
        raise ValueError(f"{name}: in no layer of tests/support/architecture.py; add its unit to LAYERS")
    return best


class _Imports(ast.NodeVisitor):
    """Every import of a module: (line, imported module, names taken from it), relative ones resolved."""

    def __init__(self, name: str, is_package: bool, known: set[str]):
        self.package = name if is_package else name.rpartition(".")[0]
        self.known = known
        self.found: list[tuple[int, str, tuple[str, ...]]] = []
        self.process_calls: list[tuple[int, str]] = []
        self.aliases: dict[str, str] = {}  # local name -> gmmkit module it stands for

    def visit_Import(self, node):
        for alias in node.names:
            self.found.append((node.lineno, alias.name, ()))
            if alias.name.startswith("gmmkit"):
                self.aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else "gmmkit"

    def visit_ImportFrom(self, node):
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        names = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in self.known:  # `from . import launch`: the module launch, not a name of the package
                self.found.append((node.lineno, sub, ()))
                self.aliases[alias.asname or alias.name] = sub
            else:
                names.append(alias.name)
        if names:
            self.found.append((node.lineno, base, tuple(names)))

    def visit_Call(self, node):
        f = node.func
        if (
            isinstance(f, ast.Attribute)
            and isinstance(f.value, ast.Name)
            and f.value.id == "os"
            and f.attr in PROCESS_CALLS
        ):
            self.process_calls.append((node.lineno, f"os.{f.attr}"))
        self.generic_visit(node)


def _private_reads(tree: ast.AST, aliases: dict[str, str]) -> list[tuple[int, str]]:
    reads = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            reads.append((node.lineno, f"{aliases[node.value.id]}.{node.attr}"))
    return reads


def violations(root: Path) -> list[str]:
    """Every breach of the rules in the package at ``root`` (a folder named gmmkit), one line each."""
    root = Path(root)
    files = sorted(root.rglob("*.py"))
    known = {module_name(root, f) for f in files}
    found = []
    for path in files:
        name, rel = module_name(root, path), path.relative_to(root.parent)
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_LINES:
            found.append(f"{rel}: {lines} lines, over {MAX_LINES}")
        tree = ast.parse(text, filename=str(path))
        visitor = _Imports(name, path.name == "__init__.py", known)
        visitor.visit(tree)
        layer, unit = unit_of(name)
        for line, target, names in visitor.found:
            if target.startswith("gmmkit"):
                other_layer, other_unit = unit_of(target)
                if not (other_layer < layer or other_unit == unit or (layer == 0 and other_layer == 0)):
                    found.append(
                        f"{rel}:{line}: imports {target} ({LAYERS[other_layer][0]}) from "
                        f"{LAYERS[layer][0]}: imports go down the layers"
                    )
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private and target != name:
                    found.append(f"{rel}:{line}: imports the private {', '.join(private)} of {target}")
                continue
            top = target.split(".")[0]
            if top in OWNERS and not any(_within(name, owner) for owner in OWNERS[top]):
                found.append(f"{rel}:{line}: imports {top}, which only {', '.join(OWNERS[top])} may import")
        for line, call in visitor.process_calls:
            if not any(_within(name, owner) for owner in OWNERS["subprocess"]):
                found.append(
                    f"{rel}:{line}: starts a process ({call}), which only {', '.join(OWNERS['subprocess'])} may do"
                )
        for line, read in _private_reads(tree, visitor.aliases):
            found.append(f"{rel}:{line}: reads the private {read}")
    return found
