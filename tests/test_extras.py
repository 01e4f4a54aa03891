"""The core install works without the extras, and each missing extra is an error that names it.

A child process blocks the extras' modules with a ``sys.meta_path`` finder (as if only
``pip install portfolio_batch`` had run), then probes each feature and prints what happened as
JSON. scripts/check_core_install.py does the same in a real bare venv (make check-core, CI).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

# typer's and rich's, FastAPI's and uvicorn's, matplotlib's, ipywidgets', jinja2's modules.
BLOCKED = ("fastapi", "uvicorn", "matplotlib", "typer", "rich", "ipywidgets", "jinja2")

PROBE = textwrap.dedent(
    """
    import contextlib, io, json, sys, tempfile, traceback
    from pathlib import Path

    BLOCKED = set(sys.argv[1].split(","))


    class Blocker:
        # As if the extra was never installed: the import fails the way a missing package does.
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None


    sys.meta_path.insert(0, Blocker())
    out = {}


    def probe(key, fn):
        try:
            value = fn()
        except BaseException as exc:
            out[key] = {
                "type": type(exc).__name__,
                "mro": [c.__name__ for c in type(exc).__mro__],
                "message": str(exc),
                "traceback": traceback.format_exc(),
            }
        else:
            out[key] = {"type": None, "value": value}


    import portfolio_batch as pb

    tmp = Path(tempfile.mkdtemp())


    def core():
        portfolio = pb.load_portfolio("testdata/portfolio.csv")
        requests = pb.build_requests(portfolio)
        costs = pb.estimate_cost(requests)
        manifest = pb.to_jsonl(requests, tmp / "out", costs=costs)
        lines = sum(
            len(Path(p).read_text(encoding="utf-8").splitlines()) for p in manifest["path"]
        )
        return {
            "positions": len(portfolio),
            "requests": len(requests),
            "batch_cost_usd": float(costs["batch_cost_usd"].sum()),
            "jsonl_lines": lines,
        }


    probe("core", core)
    costs = pb.estimate_cost(pb.build_requests(pb.load_portfolio("testdata/portfolio.csv")))
    manifest = pb.to_jsonl(
        pb.build_requests(pb.load_portfolio("testdata/portfolio.csv")), tmp / "m", costs=costs
    )
    probe("report", lambda: str(pb.report(costs, path=tmp / "report.html")))
    probe("chart", lambda: repr(pb.charts.cost_breakdown(costs)))
    probe("local", lambda: repr(pb.local.LocalServer))
    probe("submit", lambda: len(pb.submit(manifest, budget_usd=1.0)))


    def cli():
        from portfolio_batch.cli import main

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                main(["--help"])
            except SystemExit as exc:
                return {"code": exc.code, "stderr": err.getvalue()}
        return {"code": None, "stderr": err.getvalue()}


    probe("cli", cli)
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AZURE_OPENAI_API_KEY")
        and k not in ("AZURE_OPENAI_ENDPOINT", "PORTFOLIO_BATCH_ENGINE")
    }
    env["PORTFOLIO_BATCH_HOME"] = str(tmp_path_factory.mktemp("home"))
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(BLOCKED)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _missing(probe: dict[str, Any], extra: str) -> str:
    """The probe raised MissingDependencyError naming ``extra`` and its pip command."""
    assert probe["type"] == "MissingDependencyError", probe.get("traceback", probe)
    assert "ImportError" in probe["mro"]  # `except ImportError` in a user's code still catches it
    assert f"the {extra!r} extra" in probe["message"]
    assert f"pip install 'portfolio_batch[{extra}]'" in probe["message"]
    message: str = probe["message"]
    return message


def test_the_core_helpers_work_without_any_extra(probed: dict[str, Any]) -> None:
    core = probed["core"]
    assert core["type"] is None, core.get("traceback")
    value = core["value"]
    assert value["positions"] > 0
    assert value["requests"] == value["positions"]
    assert value["jsonl_lines"] == value["requests"]
    assert value["batch_cost_usd"] > 0


def test_import_loads_no_extra_even_when_installed() -> None:
    # import time: the extras load when a feature that needs them runs, not on import
    code = f"import sys, portfolio_batch; print([m for m in {BLOCKED!r} if m in sys.modules])"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_report_names_the_report_extra(probed: dict[str, Any]) -> None:
    _missing(probed["report"], "report")


def test_a_chart_names_the_report_extra(probed: dict[str, Any]) -> None:
    assert "'matplotlib'" in _missing(probed["chart"], "report")


def test_the_local_server_names_the_local_extra(probed: dict[str, Any]) -> None:
    _missing(probed["local"], "local")


def test_submit_without_a_key_says_set_the_key_or_install_local(probed: dict[str, Any]) -> None:
    message = _missing(probed["submit"], "local")
    assert "set OPENAI_API_KEY" in message


def test_the_cli_prints_one_line_naming_the_cli_extra(probed: dict[str, Any]) -> None:
    cli = probed["cli"]
    assert cli["type"] is None, cli.get("traceback")
    assert cli["value"]["code"] == 2
    lines = cli["value"]["stderr"].strip().splitlines()
    assert len(lines) == 1, lines  # not a traceback
    assert "pip install 'portfolio_batch[cli]'" in lines[0]
    assert lines[0].startswith("Error: ")


def test_every_extra_named_in_the_docs_and_code_exists() -> None:
    # a pip line naming an extra that pyproject.toml lacks installs without it, silently
    import re
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = set(pyproject["project"]["optional-dependencies"])
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / ".ci" / "run", ROOT / "pyproject.toml"]
    files += sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "portfolio_batch").rglob("*.py"))
    patterns = (
        r"portfolio_batch\[([\w,-]+)\]",  # pip install 'portfolio_batch[cli]'
        r"['\"]\.\[([\w,-]+)\]['\"]",  # pip install -e '.[cli,local]'
        r"missing_extra\([^)]*?,\s*['\"]([\w-]+)['\"]",  # missing_extra("typer", "cli")
    )
    named: dict[str, set[str]] = {}
    for path in files:
        text = path.read_text(encoding="utf-8")
        for pattern in patterns:
            for group in re.findall(pattern, text):
                for extra in group.split(","):
                    named.setdefault(extra, set()).add(str(path.relative_to(ROOT)))
    assert {"local", "report", "cli", "notebook", "all"} <= set(named)
    unknown = {extra: sorted(where) for extra, where in named.items() if extra not in extras}
    assert unknown == {}, f"extras not in pyproject.toml: {unknown}"
