"""The notebooks are guides, so what they show is checked here: each runs top to bottom in a real
kernel on the embedded local server within a minute (01 through papermill, with parameters), and
its outputs are read back. The committed files carry no outputs and no ``assert``."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
BUDGET_S = 60.0

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_a_guide_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "strip outputs"
    assert "widgets" not in nb.metadata
    asserts = [c.source for c in code if "assert " in c.source or "assert(" in c.source]
    assert asserts == [], "checks belong in tests/test_notebooks.py, not in a guide"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and code.index(params[0]) == 0, "papermill needs a parameters cell"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """notebooks/ and testdata/portfolio.csv side by side, as in the repository."""
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    (tmp_path / "testdata").mkdir()
    shutil.copy(ROOT / "testdata" / "portfolio.csv", tmp_path / "testdata")
    return tmp_path


def execute(workdir: Path, name: str, **parameters: Any) -> tuple[Any, float]:
    """Run notebooks/<name>.ipynb (papermill when parameters are given); (notebook, seconds)."""
    source = workdir / "notebooks" / f"{name}.ipynb"
    started = time.monotonic()
    if parameters:
        import papermill

        out = workdir / f"{name}.out.ipynb"
        papermill.execute_notebook(
            str(source),
            str(out),
            parameters=parameters,
            cwd=str(workdir / "notebooks"),
            kernel_name="python3",
            progress_bar=False,
        )
        nb = nbformat.read(out, as_version=4)
    else:
        from nbclient import NotebookClient

        nb = nbformat.read(source, as_version=4)
        NotebookClient(
            nb,
            timeout=120,
            kernel_name="python3",
            resources={"metadata": {"path": str(workdir / "notebooks")}},
        ).execute()
    return nb, time.monotonic() - started


def outputs(nb: Any) -> list[tuple[int, dict[str, Any]]]:
    return [
        (i, o)
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    ]


def text_of(nb: Any) -> str:
    parts = []
    for _, o in outputs(nb):
        if o.output_type == "stream":
            parts.append(o.text)
        else:
            parts.append(o.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def find(nb: Any, mime: str, needle: str) -> list[dict[str, Any]]:
    return [o for _, o in outputs(nb) if needle in str(o.get("data", {}).get(mime, ""))]


def no_errors(nb: Any) -> None:
    errors = [o for _, o in outputs(nb) if o.output_type == "error"]
    assert errors == [], "\n".join(errors[0].traceback)[-3000:] if errors else ""


def images(nb: Any) -> int:
    return sum("image/png" in o.get("data", {}) for _, o in outputs(nb))


def test_quickstart_runs_with_papermill_parameters(workdir: Path) -> None:
    out_dir = workdir / "my-report"
    nb, seconds = execute(
        workdir, "01_quickstart", engine="rules", budget_usd=0.5, out_dir=str(out_dir)
    )
    no_errors(nb)
    assert seconds < BUDGET_S, f"{seconds:.0f} s"
    text = text_of(nb)
    assert "40 positions, weights sum to 100.0%" in text
    assert "40 requests" in text and "with the Batch API" in text
    # the run card: a live widget, and a saved rendering that shows how the run ended
    (card,) = find(nb, "text/html", "pb-run-card")
    assert WIDGET_MIME in card["data"]
    assert "[completed]" in card["data"]["text/plain"]
    assert "40 of 40 reviewed" in card["data"]["text/html"]
    assert "Simulated" in card["data"]["text/plain"]  # no key: the answers are not an LLM's
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert card["data"][WIDGET_MIME]["model_id"] in state
    (summary,) = find(nb, "text/html", "portfolio_batch summary")
    # whole numbers read as such (it showed 40.000000 once)
    assert re.search(r"<td>successes</td>\s*<td>40</td>", summary["data"]["text/html"])
    assert images(nb) >= 3
    report = out_dir / "report.html"
    assert report.is_file() and str(report.resolve()) in text
    # the report names the batch the card showed
    batch_id = card["data"]["text/plain"].split("shard 0  ")[1].split()[0]
    assert batch_id.startswith("batch_") and batch_id in report.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("model", "provider", "key_var"),
    [
        ("claude-haiku-4-5", "anthropic", "ANTHROPIC_API_KEY"),
        ("gemini-2.5-flash", "gemini", "GEMINI_API_KEY"),
    ],
    ids=["anthropic", "gemini"],
)
def test_quickstart_runs_on_the_provider_its_model_names(
    workdir: Path, model: str, provider: str, key_var: str
) -> None:
    """model=claude-*/gemini-* with no key: the same notebook runs on the embedded server's
    Anthropic/Gemini batch routes, simulated, and shows every position reviewed."""
    out_dir = workdir / "my-report"
    nb, seconds = execute(
        workdir, "01_quickstart", model=model, engine="rules", budget_usd=0.5, out_dir=str(out_dir)
    )
    no_errors(nb)
    assert seconds < BUDGET_S, f"{seconds:.0f} s"
    text = text_of(nb)
    assert "40 requests" in text
    assert f"No {key_var} found" in text  # the simulated notice names the provider's key
    (card,) = find(nb, "text/html", "pb-run-card")
    plain = card["data"]["text/plain"]
    assert f"40 requests on {model} [completed]" in plain and "Simulated" in plain
    assert "40 of 40 reviewed" in card["data"]["text/html"]
    (summary,) = find(nb, "text/html", "portfolio_batch summary")
    assert re.search(r"<td>successes</td>\s*<td>40</td>", summary["data"]["text/html"])
    # the report records the batch on the provider's backend, and names the card's batch
    html = (out_dir / "report.html").read_text(encoding="utf-8")
    assert f"<td>{provider}:local:embedded:rules</td>" in html
    batch_id = plain.split("shard 0  ")[1].split()[0]
    assert batch_id in html


def test_risk_dashboard_starts_with_a_canary_lists_runs_and_shows_the_dashboard(
    workdir: Path,
) -> None:
    nb, seconds = execute(workdir, "02_risk_dashboard")
    no_errors(nb)
    assert seconds < BUDGET_S, f"{seconds:.0f} s"
    (card,) = find(nb, "text/html", "pb-run-card")
    plain = card["data"]["text/plain"]
    assert "Canary passed: 2 of 2 answers usable; the other 38 requests were sent" in plain
    assert plain.count(" canary") == 1 and "[completed]" in plain
    run_id = plain.split("] ")[1].split()[0]
    (runs,) = find(nb, "text/html", "pb-runs")
    assert run_id in runs["data"]["text/html"]
    (dash,) = find(nb, "text/html", "pb-dashboard")
    assert WIDGET_MIME in dash["data"]
    static = dash["data"]["text/html"]  # what GitHub or nbconvert shows
    assert static.count("<tr>") == 41 and "data:image/png;base64," in static
    assert "40 of 40 positions" in dash["data"]["text/plain"]
    # the high-risk selection's summary, and the charts drawn into one figure
    text = text_of(nb)
    assert "weighted_risk" in text and "positions" in text
    assert any("2 Axes" in o.get("data", {}).get("text/plain", "") for _, o in outputs(nb))
    assert (workdir / "notebooks" / "out" / "dashboard" / "report.html").is_file()


def test_cost_planning_prices_each_model_on_its_own(workdir: Path) -> None:
    nb, seconds = execute(workdir, "03_cost_planning")
    no_errors(nb)
    assert seconds < BUDGET_S, f"{seconds:.0f} s"
    models = ["gpt-4o-mini", "gpt-4.1-mini", "gpt-4.1", "gpt-4o"]
    html = "\n".join(str(o.get("data", {}).get("text/html", "")) for _, o in outputs(nb))
    assert all(m in html for m in models)
    assert "✓" in html and "✗" in html  # some models fit the smallest budget, some do not
    assert images(nb) == 1
    text = text_of(nb)
    assert text.count("50%") == 4  # the Batch API halves every model's price
    assert "gpt-4o-mini fits $0.01" in text  # check_budget on the smallest budget
    json.dumps(nb)  # the executed notebook is still valid JSON throughout
