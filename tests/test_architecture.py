"""Architecture rules of the package, checked on its source (issue 10).

* Layering: the library never imports the application (``attnflow.app`` and ``python -m
  attnflow``), by an ``ast`` walk of every import (top level and inside functions, absolute and
  relative) and by import-linter (``[tool.importlinter]`` in ``pyproject.toml``).
* Privacy: no module imports a private name (``_x``) of another module of the package, nor
  reaches one through a module alias (``metrics._x``); a package may import its own private
  submodules (``attnflow.kernels`` imports ``attnflow.kernels._numba``).
* Light imports: ``import attnflow`` and every numpy-level module load no dolfinx, PETSc, MPI,
  plotting; each module is imported in a process of its own.
* Size: a module over 500 lines says in its docstring why it is one idea.

The checkers are plain functions of source text, tested on small sources first (so a rule
that cannot fire is noticed), then run over ``src/attnflow``.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import serial_env

SERIAL_ENV = serial_env()

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "attnflow"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

#: Modules a numpy-level import must not load.
HEAVY = (
    "dolfinx",
    "petsc4py",
    "ufl",
    "basix",
    "ffcx",
    "mpi4py.MPI",
    "matplotlib",
    "pyvista",
)
MAX_LINES = 500
ONE_IDEA = re.compile(r"\bone idea\b", re.IGNORECASE)


# -- the package's modules ---------------------------------------------------------------------
@dataclass(frozen=True)
class Module:
    name: str  # dotted name, e.g. "attnflow.kernels._numba"
    path: Path
    is_package: bool

    @property
    def package(self) -> str:
        """The package relative imports start from (the module itself for ``__init__``)."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


def discover(root: Path = PACKAGE, prefix: str = "attnflow") -> list[Module]:
    """Every module of the source tree, found with :func:`pkgutil.iter_modules` (which reads the
    directories and imports nothing)."""
    mods = [Module(prefix, root / "__init__.py", True)]
    for info in pkgutil.iter_modules([str(root)]):
        name = f"{prefix}.{info.name}"
        if info.ispkg:
            mods += discover(root / info.name, name)
        else:
            mods.append(Module(name, root / f"{info.name}.py", False))
    return mods


MODULES = discover()
MODULE_NAMES = {m.name for m in MODULES}


def is_app(name: str) -> bool:
    """The application: ``attnflow.app`` (and below) and ``attnflow.__main__``."""
    return name in ("attnflow.app", "attnflow.__main__") or name.startswith("attnflow.app.")


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# -- imports of a source -----------------------------------------------------------------------
@dataclass(frozen=True)
class Import:
    line: int
    module: str  # the module imported from (resolved, absolute)
    name: str | None  # the name imported from it (``from module import name``), else None


def resolve(module: str | None, level: int, package: str) -> str:
    """Absolute module of ``from <level dots><module> import ...`` inside ``package``."""
    if level == 0:
        return module or ""
    parts = package.split(".")
    base = parts[: len(parts) - (level - 1)] if level > 1 else parts
    return ".".join([*base, module] if module else base)


def imports_of(tree: ast.AST, package: str) -> list[Import]:
    """Every import statement anywhere in ``tree`` (module level, functions, classes, ``if``
    blocks) and every ``importlib.import_module("...")`` / ``__import__("...")`` with a literal
    name."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [Import(node.lineno, a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = resolve(node.module, node.level, package)
            out += [Import(node.lineno, mod, a.name) for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.append(Import(node.lineno, node.args[0].value, None))
    return out


def app_imports(source: str, module: str, package: str) -> list[str]:
    """``line: target`` of the imports of the application in a module's source."""
    found = []
    for imp in imports_of(ast.parse(source), package):
        targets = [imp.module] + ([f"{imp.module}.{imp.name}"] if imp.name else [])
        hit = next((t for t in targets if is_app(t)), None)
        if hit is not None:
            found.append(f"{imp.line}: imports {hit}")
    return found


# -- privacy -----------------------------------------------------------------------------------
def _own_private_submodule(importer: Module | str, target: str) -> bool:
    """Whether ``target`` (a module) is private only below a package that holds the importer:
    ``attnflow.kernels._numba`` may be imported by ``attnflow.kernels`` and its modules."""
    package = importer.package if isinstance(importer, Module) else importer
    parts = target.split(".")
    for k, part in enumerate(parts):
        if is_private(part):
            owner = ".".join(parts[:k])
            if not (package == owner or package.startswith(owner + ".")):
                return False
    return True


def private_imports(source: str, importer: Module, modules: set[str]) -> list[str]:
    """Imports of private names (or private modules) of other modules of the package, and
    private attributes reached through an alias of a package module."""
    tree = ast.parse(source)
    found = []
    aliases: dict[str, str] = {}  # local name -> package module it is bound to
    for imp in imports_of(tree, importer.package):
        if not imp.module.startswith("attnflow"):
            continue
        if not _own_private_submodule(importer, imp.module):
            found.append(f"{imp.line}: imports the private module {imp.module}")
            continue
        if imp.name is None:
            continue
        sub = f"{imp.module}.{imp.name}"
        if sub in modules:  # ``from package import submodule``
            if is_private(imp.name) and not _own_private_submodule(importer, sub):
                found.append(f"{imp.line}: imports the private module {sub}")
        elif is_private(imp.name):
            found.append(f"{imp.line}: imports the private name {imp.name} of {imp.module}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("attnflow"):
                    local = a.asname or a.name.split(".")[0]
                    aliases[local] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            mod = resolve(node.module, node.level, importer.package)
            for a in node.names:
                if f"{mod}.{a.name}" in modules:
                    aliases[a.asname or a.name] = f"{mod}.{a.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain, value = [node.attr], node.value
        while isinstance(value, ast.Attribute):
            chain.insert(0, value.attr)
            value = value.value
        if not (isinstance(value, ast.Name) and value.id in aliases):
            continue
        mod = aliases[value.id]
        for attr in chain:
            target = f"{mod}.{attr}"
            if is_private(attr):
                if target in modules and _own_private_submodule(importer, target):
                    mod = target
                    continue
                if mod != importer.name:
                    found.append(f"{node.lineno}: uses the private {target}")
                break
            if target not in modules:
                break
            mod = target
    return sorted(set(found), key=lambda s: int(s.split(":")[0]))


PRIVATE_CALL = re.compile(r"_[a-z]\w*")


def private_method_calls(source: str) -> list[str]:
    """Heuristic: calls ``obj._method(...)`` on anything but ``self``, ``cls``, ``super()`` and
    the classes and functions of the module itself."""
    tree = ast.parse(source)
    local = {
        n.name
        for n in ast.walk(tree)
        if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    }
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if not PRIVATE_CALL.fullmatch(node.func.attr):
            continue
        obj = node.func.value
        if isinstance(obj, ast.Name) and obj.id in {"self", "cls", *local}:
            continue
        if isinstance(obj, ast.Call) and isinstance(obj.func, ast.Name) and obj.func.id == "super":
            continue
        found.append(
            (node.lineno, node.col_offset, f"{node.lineno}: {ast.unparse(node.func)}(...)")
        )
    return [f for *_, f in sorted(found)]


# -- the checkers catch what they must ---------------------------------------------------------
KERNELS = Module("attnflow.kernels", PACKAGE / "kernels" / "__init__.py", True)
MODEL = Module("attnflow.model", PACKAGE / "model.py", False)
FEM_SOLVER = Module("attnflow.fem.solver", PACKAGE / "fem" / "solver.py", False)
FAKE_MODULES = {
    "attnflow",
    "attnflow.app",
    "attnflow.app.cli",
    "attnflow.kernels",
    "attnflow.kernels._numba",
    "attnflow.metrics",
    "attnflow.model",
    "attnflow.fem",
    "attnflow.fem.solver",
}


@pytest.mark.parametrize(
    "source",
    [
        "import attnflow.app",
        "import attnflow.app.cli as cli",
        "from attnflow.app import cli",
        "from attnflow import app",
        "from attnflow.app.config import schema",
        "from .app import cli",
        "def f():\n    from attnflow.app.runner import run\n    return run",
        "class A:\n    def f(self):\n        import attnflow.__main__",
        "import importlib\nimportlib.import_module('attnflow.app.cli')",
    ],
)
def test_layering_checker_finds_application_imports(source):
    assert app_imports(source, "attnflow.model", "attnflow") != []


def test_layering_checker_resolves_relative_imports_and_passes_library_imports():
    assert app_imports("from ..app import cli", "attnflow.fem.solver", "attnflow.fem") != []
    assert app_imports("from . import app", "attnflow.fem.solver", "attnflow.fem") == []  # fem.app
    ok = "import attnflow\nfrom attnflow import model, kernels\nfrom .kernels import kernel_sums"
    assert app_imports(ok, "attnflow.model", "attnflow") == []
    assert app_imports("from attnflow.application import x", "attnflow.model", "attnflow") == []


@pytest.mark.parametrize(
    ("source", "importer"),
    [
        ("from attnflow.metrics import _gap", MODEL),
        ("from attnflow.kernels._numba import softmax_sums", MODEL),
        ("import attnflow.kernels._numba", FEM_SOLVER),
        ("from attnflow.kernels import _numba", MODEL),
        ("from ..kernels import _numba", FEM_SOLVER),
        ("from .metrics import _gap", MODEL),
        ("def f():\n    from attnflow.model import _LOG_MAX\n    return _LOG_MAX", FEM_SOLVER),
        ("from attnflow import metrics\nmetrics._gap(1)", MODEL),
        ("import attnflow.metrics as m\nm._gap(1)", MODEL),
        ("import attnflow\nattnflow.metrics._gap(1)", MODEL),
        ("from attnflow import kernels\nkernels._numba.softmax_sums(1)", MODEL),
        ("from attnflow.kernels import _numba\nx = _numba._tree_walk", KERNELS),
        ("from attnflow.kernels._numba import _tree_walk", KERNELS),
    ],
)
def test_privacy_checker_finds_private_imports(source, importer):
    assert private_imports(source, importer, FAKE_MODULES) != [], source


@pytest.mark.parametrize(
    ("source", "importer"),
    [
        ("from attnflow.kernels import _numba\n_numba.softmax_sums(1)", KERNELS),
        ("from . import _numba", KERNELS),
        ("from attnflow.metrics import circle_gap_clusters", MODEL),
        ("from attnflow import __version__", MODEL),
        ("from attnflow import metrics\nmetrics.circle_gap_clusters(1)", MODEL),
        ("import numpy as np\nnp._core", MODEL),
        ("from attnflow.model import SelfAttention\nSelfAttention._private", FEM_SOLVER),
    ],
)
def test_privacy_checker_passes_allowed_imports(source, importer):
    assert private_imports(source, importer, FAKE_MODULES) == [], source


def test_private_call_heuristic():
    src = textwrap.dedent(
        """
        class A:
            def _f(self):
                return self._g() + super()._h() + A._k()

            @classmethod
            def _c(cls):
                return cls._f()

        def g(model, x):
            return model._velocity(x) + x.copy()._norm() + obj.attr._x()
        """
    )
    hits = private_method_calls(src)
    assert [h.split(": ")[1] for h in hits] == [
        "model._velocity(...)",
        "x.copy()._norm(...)",
        "obj.attr._x(...)",
    ]


# -- the rules, on the source tree -------------------------------------------------------------
def test_source_tree_is_discovered():
    names = MODULE_NAMES
    for must in ("attnflow", "attnflow.model", "attnflow.kernels._numba", "attnflow.fem"):
        assert must in names
    assert all(m.path.is_file() for m in MODULES)


LIBRARY = [m for m in MODULES if not is_app(m.name)]


@pytest.mark.parametrize("module", LIBRARY, ids=lambda m: m.name)
def test_library_never_imports_the_application(module):
    hits = app_imports(module.path.read_text(), module.name, module.package)
    rel = module.path.relative_to(ROOT)
    assert not hits, "\n".join(f"{rel}:{h}" for h in hits)


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed")
def test_import_linter_contracts_are_kept():
    out = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout, out.stdout


@pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed")
def test_import_linter_contract_breaks_on_a_library_import_of_the_app(tmp_path):
    """The contract bites: a copy of the package whose model imports the app breaks it."""
    shutil.copytree(PACKAGE, tmp_path / "attnflow", ignore=shutil.ignore_patterns("__pycache__"))
    model = tmp_path / "attnflow" / "model.py"
    model.write_text(model.read_text() + "\n\ndef _late():\n    import attnflow.app  # noqa\n")
    out = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(tmp_path), "PATH": str(LINT_IMPORTS.parent)},
    )
    assert out.returncode != 0, out.stdout + out.stderr
    assert "attnflow.model -> attnflow.app" in out.stdout, out.stdout


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.name)
def test_no_private_names_across_modules(module):
    hits = private_imports(module.path.read_text(), module, MODULE_NAMES)
    rel = module.path.relative_to(ROOT)
    assert not hits, "\n".join(f"{rel}:{h}" for h in hits)


def test_no_private_method_calls_on_other_objects():
    """Heuristic for issue 10: ``obj._method(...)`` on anything but ``self``/``cls``/``super()``
    reaches into another object's internals."""
    hits = [
        f"{m.path.relative_to(ROOT)}:{h}"
        for m in MODULES
        for h in private_method_calls(m.path.read_text())
    ]
    assert not hits, "\n".join(hits)


# -- light imports -----------------------------------------------------------------------------
NUMPY_LEVEL = [
    m.name
    for m in MODULES
    if not (is_app(m.name) or m.name == "attnflow.fem" or m.name.startswith("attnflow.fem."))
]

#: Imports ``attnflow`` (which ``import attnflow.X`` imports first anyway), then forks one child
#: per module: each child starts from exactly the state a fresh ``import attnflow.X`` reaches
#: after its parent package, imports the module alone and reports the heavy modules loaded.
_PROBE = """
import json, os, sys
heavy, names = json.loads(sys.argv[1]), json.loads(sys.argv[2])
import attnflow
print(json.dumps({"attnflow": [h for h in heavy if h in sys.modules]}), flush=True)
for name in names:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            __import__(name)
            res = [h for h in heavy if h in sys.modules]
        except BaseException as e:
            res = "error: " + repr(e)
        os.write(w, json.dumps({name: res}).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        print(f.read(), flush=True)
    os.waitpid(pid, 0)
"""


@pytest.fixture(scope="module")
def loaded_by():
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(HEAVY), json.dumps(NUMPY_LEVEL)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=SERIAL_ENV,
    )
    assert out.returncode == 0, out.stderr
    res = {}
    for line in out.stdout.splitlines():
        res.update(json.loads(line))
    return res


def test_numpy_level_modules_are_discovered():
    assert {"attnflow", "attnflow.model", "attnflow.kernels._numba"} <= set(NUMPY_LEVEL)
    assert not any(n.startswith(("attnflow.fem", "attnflow.app")) for n in NUMPY_LEVEL)
    assert "attnflow.__main__" not in NUMPY_LEVEL


def test_probe_sees_a_heavy_import():
    """The probe reports what a module loads: ``attnflow.fem`` loads dolfinx and PETSc."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(HEAVY), json.dumps(["attnflow.fem"])],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=SERIAL_ENV,
    )
    res = {}
    for line in out.stdout.splitlines():
        res.update(json.loads(line))
    if isinstance(res.get("attnflow.fem"), str):
        pytest.skip(f"attnflow.fem does not import here: {res['attnflow.fem']}")
    assert {"dolfinx", "petsc4py", "mpi4py.MPI"} <= set(res["attnflow.fem"])


@pytest.mark.parametrize("name", NUMPY_LEVEL)
def test_numpy_level_import_is_light(loaded_by, name):
    assert loaded_by["attnflow"] == [], f"import attnflow loads {loaded_by['attnflow']}"
    assert loaded_by[name] == [], f"import {name} loads {loaded_by[name]}"


# -- module size -------------------------------------------------------------------------------
@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.name)
def test_long_modules_say_why_they_are_one_idea(module):
    source = module.path.read_text()
    n = len(source.splitlines())
    if n <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(source)) or ""
    assert ONE_IDEA.search(doc), (
        f"{module.path.relative_to(ROOT)} has {n} lines (> {MAX_LINES}) and its docstring does "
        "not say why it is one idea (split it, or add a line with the words 'one idea')"
    )
