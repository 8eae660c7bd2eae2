"""The package's layout (issue 16, "Layout without circles"): no import cycles, nothing imports upwards, no
private names used across packages.

The import graph is read from the source with ``ast``: every ``import`` and ``from ... import`` of a traintricks
module, module-level and inside functions alike (a function-level import is a dependency all the same; it only
moves the failure to run time). The layers are those of ``docs/architecture.md``; a module may import its own
layer or a lower one.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "traintricks"

# The layers, top to bottom. A key names a module exactly, or with ".*" every module below a package (the package
# itself included). Every module of traintricks must fall under exactly one entry (a new module is placed here).
LAYERS: dict[str, list[str]] = {
    "applications": ["traintricks", "traintricks.__main__", "traintricks.cli", "traintricks.evaluation.report",
                     "traintricks.evaluation.compare", "traintricks.evaluation.lab.*", "traintricks.evaluation.html"],
    # assembly: config -> components -> Trainer; the catalogue of every registry; the run's written report
    "recipe": ["traintricks.training", "traintricks.training.recipe", "traintricks.training.report",
               "traintricks.training.inference", "traintricks.training.probe",
               "traintricks.training.average",
               "traintricks.config", "traintricks.catalog"],
    "engine": ["traintricks.training.trainer", "traintricks.training.callbacks", "traintricks.training.checkpoint"],
    "techniques": ["traintricks.nn.*", "traintricks.losses.*", "traintricks.optim.*", "traintricks.memory.*",
                   "traintricks.data.*", "traintricks.models.*", "traintricks.parallel.*", "traintricks.surgery.*", "traintricks.evaluation",
                   "traintricks.evaluation.ema", "traintricks.evaluation.averaging", "traintricks.evaluation.early_stopping",
                   "traintricks.evaluation.metrics", "traintricks.evaluation.tasks", "traintricks.evaluation.adversarial"],
    # imported by every layer: the registry, the shared errors, the Callback base (techniques define callbacks)
    "base": ["traintricks.registry", "traintricks.errors", "traintricks.callback"],
}
RANK = {name: len(LAYERS) - i for i, name in enumerate(LAYERS)}      # applications highest


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("traintricks",) + path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _layer(module: str) -> str:
    found = [layer for layer, keys in LAYERS.items() for key in keys
             if module == key or (key.endswith(".*") and (module == key[:-2] or module.startswith(key[:-1])))]
    if len(found) != 1:
        raise AssertionError(f"{module}: {'in no layer' if not found else f'in layers {found}'}; place it in "
                             f"tests/test_layout.py's LAYERS and docs/architecture.md's picture")
    return found[0]


def _package(module: str) -> str:
    """The top-level subpackage (``traintricks.nn``) or top-level module (``traintricks.cli``) of ``module``."""
    return ".".join(module.split(".")[:2])


class Import:
    def __init__(self, source: str, target: str, name: str | None, line: int) -> None:
        self.source, self.target, self.name, self.line = source, target, name, line

    def __str__(self) -> str:
        what = f"{self.target}.{self.name}" if self.name else self.target
        return f"{MODULES[self.source].relative_to(ROOT.parent)}:{self.line}: {self.source} imports {what}"


def _imports() -> list[Import]:
    """Every import of a traintricks module, at any depth of every module's syntax tree."""
    out = []
    for mod, path in MODULES.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out += [Import(mod, a.name, None, node.lineno) for a in node.names if a.name in MODULES]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                for a in node.names:
                    if f"{base}.{a.name}" in MODULES:
                        out.append(Import(mod, f"{base}.{a.name}", None, node.lineno))
                    elif base in MODULES:
                        out.append(Import(mod, base, a.name, node.lineno))
    return [i for i in out if i.target != i.source]


IMPORTS = _imports()


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))
    return comps


def test_the_graph_sees_function_level_imports():
    """The checks below read imports inside functions too (the CLI imports its commands lazily)."""
    lazy = [i for i in IMPORTS if i.source == "traintricks.cli" and i.target == "traintricks.evaluation.compare"]
    assert lazy, "the import graph misses traintricks.cli's function-level import of evaluation.compare"
    assert len(MODULES) > 50


def test_no_import_cycles():
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in IMPORTS:
        edges[i.source].add(i.target)
    cycles = _cycles(edges)
    detail = {}
    for comp in cycles:
        members = set(comp)
        for i in IMPORTS:
            if i.source in members and i.target in members:
                detail.setdefault((i.source, i.target), f"  {MODULES[i.source].relative_to(ROOT.parent)}:{i.line}: "
                                                        f"{i.source} -> {i.target}")
    assert not cycles, "import cycles (module-level and function-level imports):\n" + "\n".join(
        [f"{len(c)} modules: {c}" for c in cycles] + [detail[k] for k in sorted(detail)])


def test_every_module_has_a_layer():
    for mod in MODULES:
        _layer(mod)


def test_nothing_imports_upwards():
    up = [f"  {i}  ({_layer(i.source)} -> {_layer(i.target)})" for i in IMPORTS
          if RANK[_layer(i.target)] > RANK[_layer(i.source)]]
    assert not up, ("imports of a higher layer (order: " + " > ".join(LAYERS) + "; pass what is needed down "
                    "instead, e.g. a factory argument):\n" + "\n".join(sorted(up)))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_names_across_packages():
    """``from ..x import _name`` (or a private module) from another top-level package: make it public (a
    documented name) or move the code. Attribute reads ``mod._name`` through an imported module alias too."""
    bad = [f"  {i}" for i in IMPORTS if _package(i.source) != _package(i.target)
           and ((i.name is not None and _private(i.name)) or any(_private(p) for p in i.target.split(".")))]
    for mod, path in MODULES.items():             # `from ..training import checkpoint as ckpt` ... `ckpt._x`
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text(), str(path))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) + (
                        f".{node.module}" if node.module else "")
                for a in node.names:
                    if f"{base}.{a.name}" in MODULES and _package(f"{base}.{a.name}") != _package(mod):
                        aliases[a.asname or a.name] = f"{base}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname and a.name in MODULES and _package(a.name) != _package(mod):
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and _private(node.attr)):
                bad.append(f"  {path.relative_to(ROOT.parent)}:{node.lineno}: {mod} uses "
                           f"{aliases[node.value.id]}.{node.attr}")
    assert not bad, "private names used across packages:\n" + "\n".join(sorted(bad))


@pytest.mark.parametrize("old", ["traintricks/optim/lr_schedules.py", "traintricks/memory/checkpoint.py",
                                 "traintricks/parallel/sync_batchnorm.py"])
def test_renamed_modules_left_no_shim_behind(old):
    """One schedule module (optim/schedules.py); recomputation is memory/recomputation.py (not a second
    'checkpoint' beside training/checkpoint.py); synchronized batch norm lives with the layers (nn/)."""
    assert not (ROOT.parent / old).exists()


def test_module_names_are_unique_where_a_reader_would_confuse_them():
    """No two technique or engine modules share a file name across packages (``memory/checkpoint.py`` and
    ``training/checkpoint.py`` did), except ``__init__`` and the application/recipe ``report`` modules."""
    seen: dict[str, list[str]] = {}
    for mod, path in MODULES.items():
        if path.name != "__init__.py" and _layer(mod) in ("engine", "techniques", "base"):
            seen.setdefault(path.stem, []).append(mod)
    dup = {k: v for k, v in seen.items() if len(v) > 1}
    assert not dup, dup


def test_no_private_attributes_of_our_classes_used_across_packages():
    """``obj._method(...)`` reaching into a class of another package (``trainer._autocast()`` from the CLI did):
    the private attributes each package's classes define (methods, class attributes, ``self._x = ...``), PyTorch's
    own private attributes (``_buffers``, ``_modules``, ...) aside, are used only inside that package."""
    import torch
    bn = torch.nn.BatchNorm1d(1)
    opt = torch.optim.SGD(bn.parameters(), lr=0.1)
    torch_names = set()
    for obj in (bn, opt, torch.optim.lr_scheduler.StepLR(opt, 1), torch.autograd.Function):
        torch_names |= set(dir(obj))
    trees = {mod: ast.parse(path.read_text(), str(path)) for mod, path in MODULES.items()}
    owners: dict[str, set[str]] = {}
    for mod, tree in trees.items():
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ClassDef):
                for b in node.body:
                    if isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        names.append(b.name)
                    elif isinstance(b, ast.Assign):
                        names += [t.id for t in b.targets if isinstance(t, ast.Name)]
                    elif isinstance(b, ast.AnnAssign) and isinstance(b.target, ast.Name):
                        names.append(b.target.id)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id == "self"):
                names.append(node.attr)
            for n in names:
                if _private(n) and n not in torch_names:
                    owners.setdefault(n, set()).add(_package(mod))
    bad = []
    for mod, tree in trees.items():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr in owners
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                    and _package(mod) not in owners[node.attr]):
                bad.append(f"  {MODULES[mod].relative_to(ROOT.parent)}:{node.lineno}: {ast.unparse(node)} "
                           f"(private to {', '.join(sorted(owners[node.attr]))})")
    assert not bad, "private attributes used from another package:\n" + "\n".join(sorted(bad))
