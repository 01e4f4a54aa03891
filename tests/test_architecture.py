"""The architecture, pinned: dependencies run one way, and the package namespace is the API.

Layers (docs/design.md): the *pipeline* (requests → jsonl → cost → submit/poll → aggregate, with
the registry, the backends and the errors) imports nothing from the *display* (widgets, charts,
the report) nor the *cli*; the display imports no cli; ``local`` (the offline server) stands on its
own; the package root ``portfolio_batch/__init__.py`` is the composition root and may import
anything but the cli. Every import counts: top-level, inside a function, under ``TYPE_CHECKING``,
relative or absolute, and ``importlib.import_module("portfolio_batch....")`` with a literal name.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

import portfolio_batch as pb
from portfolio_batch import errors

PACKAGE = Path(pb.__file__).resolve().parent
ROOT = "portfolio_batch"

# Each first-level module or subpackage of portfolio_batch, in exactly one layer. A new module
# fails test_every_module_has_a_layer until it is placed here: that is the moment to decide.
PIPELINE = frozenset(
    {
        "_aggregate",
        "_backend",
        "_contract",
        "_cost",
        "_create",
        "_currency",
        "_decode",
        "_download",
        "_home",
        "_jsonl",
        "_locks",
        "_poll",
        "_portfolio",
        "_providers",
        "_quality",
        "_registry",
        "_requests",
        "_retry",
        "_submit",
        "_summary",
        "_sync",
        "_tokens",
        "_validate",
        "_version",
        "errors",
    }
)
DISPLAY = frozenset(
    {
        "_compare",
        "_dashboard",
        "_export",
        "_history",
        "_report",
        "_run",
        "_widgets",
        "charts",
        "review",
    }
)
CLI = frozenset({"cli"})
LOCAL = frozenset({"local"})
TESTING = frozenset({"testing"})
COMPOSITION_ROOT = frozenset({""})  # portfolio_batch/__init__.py
# What local/ (the server, its engines) may use from the rest of the package: the token counter
# (usage figures), the home directory, the errors, the contract and the version. Not the client
# side (submit, poll, aggregate): the server must not depend on what it serves.
LOCAL_MAY_IMPORT = LOCAL | {"_contract", "errors", "_home", "_tokens", "_version"}


def _layer(component: str) -> str:
    for name, layer in (
        ("pipeline", PIPELINE),
        ("display", DISPLAY),
        ("cli", CLI),
        ("local", LOCAL),
        ("testing", TESTING),
        ("composition root", COMPOSITION_ROOT),
    ):
        if component in layer:
            return name
    return "unplaced"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _component(module: str) -> str:
    """``portfolio_batch._submit`` → ``_submit``; ``portfolio_batch.local.app`` → ``local``;
    the package itself → ``""``."""
    return module.split(".")[1] if "." in module else ""


def _targets(node: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """The portfolio_batch modules an import node loads."""
    if isinstance(node, ast.Import):
        yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join([*package, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        for alias in node.names:
            # `from portfolio_batch import charts` loads the submodule charts
            sub = f"{base}.{alias.name}"
            yield sub if sub in MODULES else base
    elif (
        isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            or (isinstance(node.func, ast.Name) and node.func.id in {"import_module", "__import__"})
        )
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        yield node.args[0].value


def _imports() -> list[tuple[str, int, str]]:
    """(importing module, line, imported portfolio_batch module) for every import anywhere."""
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):  # every node: function bodies and TYPE_CHECKING blocks too
            for target in _targets(node, module, is_package):
                if target == ROOT or target.startswith(ROOT + "."):
                    found.append((module, getattr(node, "lineno", 0), target))
    return found


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}"


def test_every_module_has_a_layer() -> None:
    unplaced = sorted({_component(m) for m in MODULES if _layer(_component(m)) == "unplaced"})
    assert not unplaced, f"place these modules in a layer in {__file__}: {unplaced}"


def test_the_import_scan_sees_function_level_and_relative_imports() -> None:
    # _run (display) imports _widgets inside functions only; the CLI imports its siblings
    # relatively. Were the scan blind to either, the layer test below would pass vacuously.
    edges = {(m, t) for m, _, t in _imports()}
    assert ("portfolio_batch._run", "portfolio_batch._widgets") in edges
    assert any(
        m.startswith("portfolio_batch.cli.") and t == "portfolio_batch.cli._console"
        for m, t in edges
    )


def test_dependencies_run_one_way() -> None:
    problems = []
    for module, line, target in _imports():
        src, dst = _component(module), _component(target)
        src_layer, dst_layer = _layer(src), _layer(dst)
        if src == dst:
            continue
        if dst_layer == "cli":
            problems.append(f"{_where(module, line)} imports {target}: nothing but cli imports cli")
        elif dst_layer == "testing":
            problems.append(
                f"{_where(module, line)} imports {target}: the library never imports its test helpers"
            )
        elif src_layer == "pipeline" and dst_layer in {"display", "composition root"}:
            problems.append(
                f"{_where(module, line)} imports {target}: the pipeline imports no {dst_layer} "
                "(hand it what it needs, as poll(progress=...) gets its display)"
            )
        elif src_layer == "local" and dst not in LOCAL_MAY_IMPORT:
            problems.append(
                f"{_where(module, line)} imports {target}: local/ uses only "
                f"{sorted(LOCAL_MAY_IMPORT - LOCAL)} from the rest of the package"
            )
    assert not problems, "\n".join(problems)


# -- the namespace -----------------------------------------------------------------------------

# The public API, exactly. Adding or removing a name is an API change: change it here on purpose.
PUBLIC_API = [
    "BatchFailedError",
    "BudgetExceededError",
    "CanaryHeldError",
    "DownloadError",
    "ExportError",
    "InputError",
    "LocalServerError",
    "MODEL_FAMILIES",
    "MissingDependencyError",
    "PollTimeoutError",
    "PortfolioBatchError",
    "PricingError",
    "RISK_SCHEMA",
    "RegistryError",
    "ResultFileGoneError",
    "Run",
    "SimulatedBackendWarning",
    "SubmitError",
    "__version__",
    "aggregate_df",
    "attach",
    "build_requests",
    "cancel",
    "check_answers",
    "check_budget",
    "client",
    "compare",
    "compare_models",
    "dashboard",
    "estimate_cost",
    "iter_jsonl",
    "jobs",
    "load_portfolio",
    "merge_results",
    "poll",
    "report",
    "resume",
    "retry_failed",
    "run_sync",
    "runs",
    "start",
    "submit",
    "summarize",
    "to_jsonl",
]
SUBPACKAGES = ("charts", "errors", "local", "review", "testing")


def test_all_is_pinned() -> None:
    assert sorted(pb.__all__) == PUBLIC_API
    assert len(set(pb.__all__)) == len(pb.__all__)


def test_dir_is_the_api() -> None:
    # Not Any, TYPE_CHECKING, importlib, the private modules or what __init__ imports.
    listed = dir(pb)
    assert [n for n in listed if not n.startswith("__")] == sorted(
        n for n in pb.__all__ if not n.startswith("__")
    )
    assert listed == sorted(listed)
    assert {n for n in listed if n.startswith("__")} <= {*pb.__all__, *vars(pb)}


def test_every_public_name_resolves() -> None:
    missing = [n for n in pb.__all__ if not hasattr(pb, n)]
    assert not missing


def test_no_module_is_named_like_a_public_name() -> None:
    # `import portfolio_batch.report` would rebind pb.report (a function) to the module: the
    # reason the implementation modules are private (_report.py) and public ones are not API names.
    clashes = sorted({_component(m) for m in MODULES} & set(pb.__all__))
    assert not clashes, f"rename these modules (e.g. _{clashes[0]}.py): {clashes}"


def test_the_package_is_a_plain_module() -> None:
    assert type(pb) is types.ModuleType and pb.__class__ is types.ModuleType
    assert "__class__" not in (PACKAGE / "__init__.py").read_text(encoding="utf-8")


_FRESH = """
import inspect, types
import portfolio_batch as pb
before = {n: getattr(pb, n) for n in pb.__all__}
subpackages = {n: getattr(pb, n) for n in %(subpackages)r}
for n, m in subpackages.items():
    assert isinstance(m, types.ModuleType) and m.__name__ == "portfolio_batch." + n, (n, m)
import importlib
for name in %(private)r:
    importlib.import_module("portfolio_batch." + name)
for n in ("submit", "poll", "report", "jobs", "start"):
    assert inspect.isfunction(getattr(pb, n)), (n, getattr(pb, n))
changed = [n for n in pb.__all__ if getattr(pb, n) is not before[n]]
assert not changed, changed
print("ok")
"""


def test_subpackages_are_reachable_and_submodule_imports_shadow_nothing() -> None:
    # A fresh interpreter: after only `import portfolio_batch as pb`, pb.local and the others
    # are there; importing the private modules (whose names match functions: _submit/submit)
    # replaces no public name.
    private = sorted({_component(m) for m in MODULES if _component(m).startswith("_")})
    assert {"_submit", "_poll", "_report"} <= set(private)
    code = _FRESH % {"subpackages": SUBPACKAGES, "private": private}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# -- errors ------------------------------------------------------------------------------------


def _exception_classes(module: types.ModuleType) -> dict[str, type]:
    return {
        name: obj
        for name, obj in vars(module).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == module.__name__
    }


def test_every_error_is_exported() -> None:
    defined = _exception_classes(errors)
    assert {n for n in defined if n.endswith("Error")} >= {"PortfolioBatchError", "InputError"}
    assert sorted(defined) == sorted(errors.__all__)
    assert set(defined) <= set(pb.__all__)


@pytest.mark.parametrize("name", [n for n in PUBLIC_API if n[0].isupper()])
def test_every_exported_exception_is_ours(name: str) -> None:
    obj = getattr(pb, name)
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        # An error a user catches with `except pb.PortfolioBatchError`; warnings go on.
        assert issubclass(obj, (pb.PortfolioBatchError, Warning)), obj.__mro__
