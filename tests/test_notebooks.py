"""The notebooks are guides, so what they show is checked here: each runs top to bottom in a real
kernel on the embedded local server within a minute (01 through papermill, with parameters), and
its outputs are read back. 01 and 02 also run on Claude and Gemini models (the embedded server's
Anthropic and Gemini routes), 03 prices them. The committed files carry no outputs and no
``assert``."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest

import portfolio_batch as pb
from portfolio_batch._backend import simulated_banner

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
BUDGET_S = 60.0

pytestmark = pytest.mark.slow

# provider -> (model, name shown, key variable, batch USD per million input, per million output
# tokens): the batch rates are half the providers' published synchronous ones, gpt-4o-mini
# $0.15/$0.60, claude-haiku-4-5 $1/$5, gemini-2.5-flash $0.30/$2.50 per million tokens.
PROVIDERS = {
    "openai": ("gpt-4o-mini", "OpenAI", "OPENAI_API_KEY", 0.075, 0.30),
    "anthropic": ("claude-haiku-4-5", "Anthropic", "ANTHROPIC_API_KEY", 0.50, 2.50),
    "gemini": ("gemini-2.5-flash", "Gemini", "GEMINI_API_KEY", 0.15, 1.25),
}


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


def _workdir(path: Path) -> Path:
    """notebooks/ and testdata/portfolio.csv side by side, as in the repository."""
    shutil.copytree(ROOT / "notebooks", path / "notebooks")
    (path / "testdata").mkdir()
    shutil.copy(ROOT / "testdata" / "portfolio.csv", path / "testdata")
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return _workdir(tmp_path)


DashboardRun = tuple[Any, float, Path]  # (executed notebook, seconds, its workdir)


@pytest.fixture(scope="module")
def dashboard_runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], DashboardRun]:
    """02_risk_dashboard on a provider's model, run once per module, in the first test that
    asks (with that test's home and environment): the other providers' tests compare their
    results with the OpenAI run's, and running it again would add 15 s."""
    done: dict[str, DashboardRun] = {}

    def run(provider: str) -> DashboardRun:
        if provider not in done:
            workdir = _workdir(tmp_path_factory.mktemp(f"dashboard-{provider}"))
            # OpenAI: the committed parameters as they are; the others: their model only
            params = {} if provider == "openai" else {"model": PROVIDERS[provider][0]}
            nb, seconds = execute(workdir, "02_risk_dashboard", **params)
            done[provider] = nb, seconds, workdir
        return done[provider]

    return run


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


def html_of(nb: Any) -> str:
    return "\n".join(str(o.get("data", {}).get("text/html", "")) for _, o in outputs(nb))


def cells(row_html: str) -> tuple[str, ...]:
    """The text of each <td> of a table row."""
    tds = re.findall(r"<td[^>]*>(.*?)</td>", row_html, flags=re.S)
    return tuple(re.sub(r"<[^>]+>", "", td).strip() for td in tds)


def dashboard_rows(nb: Any) -> dict[str, tuple[str, ...]]:
    """ticker -> the cells of its row in the dashboard's static table (score, level, drivers,
    rationale, status...)."""
    (dash,) = find(nb, "text/html", "pb-dashboard")
    body = dash["data"]["text/html"].split("<tbody>", 1)[1]
    rows = [cells(r) for r in body.split("<tr>")[1:]]
    return {r[0]: r for r in rows}


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


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_risk_dashboard_starts_with_a_canary_lists_runs_and_shows_the_dashboard(
    dashboard_runs: Callable[[str], DashboardRun], provider: str
) -> None:
    """The same notebook on each provider's model (claude-*, gemini-*: their batch routes of the
    embedded server): a canary, the runs list, the dashboard and the report, simulated and
    saying whose key and prices; the rules engine is deterministic, so every position gets the
    decision the OpenAI run gave it."""
    model, name, key_var, rate_in, rate_out = PROVIDERS[provider]
    nb, seconds, workdir = dashboard_runs(provider)
    no_errors(nb)
    assert seconds < BUDGET_S, f"{seconds:.0f} s"
    (card,) = find(nb, "text/html", "pb-run-card")
    plain = card["data"]["text/plain"]
    assert "Canary passed: 2 of 2 answers usable; the other 38 requests were sent" in plain
    assert plain.count(" canary") == 1 and f"40 requests on {model} [completed]" in plain
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
    report = (workdir / "notebooks" / "out" / "dashboard" / "report.html").read_text("utf-8")
    # simulated, naming the provider's key (the warning and the card) and prices (the summary,
    # the card and the report)
    (warning,) = [o.text for _, o in outputs(nb) if "SimulatedBackendWarning" in o.get("text", "")]
    assert f"Set {key_var} to use {name}." in warning
    assert "Simulated: these batches run on" in plain and f"Set {key_var} to use {name}." in plain
    banner = simulated_banner("rules", provider=provider)
    assert banner.endswith(f"at {name} batch prices.")
    (summary,) = find(nb, "text/html", "portfolio_batch summary")
    assert banner in summary["data"]["text/html"] and banner in report
    assert f"<td>cost_usd_at_{provider}_batch_prices</td>" in summary["data"]["text/html"]
    # the cost billed: the usage the server returns at the provider's batch rates, e.g. on
    # Anthropic 12,290 prompt tokens x $0.50/M + 3,146 completion tokens x $2.50/M
    # = $0.006145 + $0.007865 = $0.0140 (Gemini: x $0.15/M + x $1.25/M = $0.0058)
    usage = re.search(r"prompt_tokens=(\d+), completion_tokens=(\d+)", text)
    assert usage is not None
    billed = int(usage[1]) * rate_in / 1e6 + int(usage[2]) * rate_out / 1e6
    assert f"so far ${billed:.4f} at {name} batch prices (simulated)" in plain
    assert f"this run would cost ${billed:.4f} at {name} batch prices" in report
    backend = "local:embedded:rules" if provider == "openai" else f"{provider}:local:embedded:rules"
    assert f"<td>{backend}</td>" in report
    if provider != "openai":
        # nothing points a Claude or Gemini user at OpenAI
        # (the report's list of libraries names the openai package)
        assert "openai" not in (text + html_of(nb)).lower()
        assert "OpenAI" not in report and "OPENAI" not in report
        # every position has the score, level, drivers and rationale of the OpenAI run
        assert dashboard_rows(nb) == dashboard_rows(dashboard_runs("openai")[0])


def test_cost_planning_prices_each_model_on_its_own(workdir: Path) -> None:
    nb, seconds = execute(workdir, "03_cost_planning")
    no_errors(nb)
    assert seconds < BUDGET_S, f"{seconds:.0f} s"
    models = ["gpt-4o-mini", "gpt-4.1-mini", "gpt-4.1", "gpt-4o"]
    html = "\n".join(str(o.get("data", {}).get("text/html", "")) for _, o in outputs(nb))
    assert all(m in html for m in models)
    (per_model,) = find(nb, "text/html", "batch, upper bound")
    assert "exact" in per_model["data"]["text/html"]  # tiktoken: OpenAI's own tokenizers
    assert "approx" not in per_model["data"]["text/html"]
    assert "✓" in html and "✗" in html  # some models fit the smallest budget, some do not
    assert images(nb) == 1
    text = text_of(nb)
    assert text.count("50%") == 4  # the Batch API halves every model's price
    assert "gpt-4o-mini fits $0.01" in text  # check_budget on the smallest budget
    json.dumps(nb)  # the executed notebook is still valid JSON throughout


def test_cost_planning_prices_claude_and_gemini_models_at_their_providers_batch_rates(
    workdir: Path,
) -> None:
    """Claude and Gemini models side by side (nothing is sent, so one run covers both):
    each priced at its provider's batch rates, half its synchronous price, its tokens
    marked approximate."""
    models = ["claude-haiku-4-5", "gemini-2.5-flash", "claude-sonnet-4-5", "gemini-2.5-pro"]
    nb, seconds = execute(workdir, "03_cost_planning", models=models)
    no_errors(nb)
    assert seconds < BUDGET_S, f"{seconds:.0f} s"
    (per_model,) = find(nb, "text/html", "batch, upper bound")
    table = per_model["data"]["text/html"]
    assert "approx" in table and "exact" not in table  # no offline tokenizer for these
    # the upper bound by hand: the prompts' tokens (o200k_base, as the notebook counts them)
    # and every answer at its max_tokens, at the providers' batch rates; on this portfolio
    # claude-haiku-4-5: 12,370 x $0.50/M + 16,000 x $2.50/M = $0.006185 + $0.04 = $0.0462,
    # synchronous 12,370 x $1/M + 16,000 x $5/M = $0.0924; gemini-2.5-flash: 12,370 x $0.15/M
    # + 16,000 x $1.25/M = $0.0219, synchronous x $0.30/M + x $2.50/M = $0.0437
    requests = pb.build_requests(
        pb.load_portfolio(ROOT / "testdata" / "portfolio.csv"), model=models[0]
    )
    tokens = int(pb.estimate_cost(requests)["input_tokens"].sum())
    answers = int(sum(body["max_tokens"] for body in requests["body"]))
    for model in ("claude-haiku-4-5", "gemini-2.5-flash"):
        provider = "anthropic" if model.startswith("claude") else "gemini"
        rate_in, rate_out = PROVIDERS[provider][3:]
        batch = tokens * rate_in / 1e6 + answers * rate_out / 1e6
        row = next(r for r in table.split("<tr>") if f">{model}</th>" in r)
        assert cells(row) == (
            f"${batch:.4f}",  # batch, upper bound
            f"${(tokens * rate_in / 1e6 + answers / 2 * rate_out / 1e6):.4f}",  # half max_tokens
            f"${2 * batch:.4f}",  # synchronous
            "approx",
        ), model
    text = text_of(nb)
    assert text.count("50%") == 4  # the Batch API halves every model's price
    assert (
        f"claude-haiku-4-5 on $0.01: The estimated batch cost ${tokens * 0.5e-6 + answers * 2.5e-6:.4f}"
        in text
    )
    assert images(nb) == 1
