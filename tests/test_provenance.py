"""Every answer says where it came from: attrs and model columns, the once-per-process warning,
the CLI line, the report banner, the CSV notice, cost labels and the notebook panel's banner.

Local runs go through the real openai SDK to the embedded server (no key) or a ``serve``d one;
answers from a real API are the golden lines in testdata/batch/output.jsonl.
"""

from __future__ import annotations

import html
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch import _backend as backend
from portfolio_batch._cost import cost_usd
from portfolio_batch._widgets import ProgressPanel, backend_banner
from tests.test_cli import PORTFOLIO, cli_env, run_cli

NOTICE = (
    r"No API key found: running offline on the local server \(engine rules\); answers are "
    r"simulated, not an LLM's judgement\. Set OPENAI_API_KEY to use OpenAI\."
)
BANNER = (
    "Simulated: answers from the offline local rules engine, not an LLM. Costs show what this "
    "run would cost at OpenAI batch prices."
)
# gpt-4o-mini at OpenAI's batch prices: $0.075 per million input tokens, $0.30 per million output
BATCH_IN, BATCH_OUT = 0.075 / 1e6, 0.30 / 1e6


@pytest.fixture(autouse=True)
def _fresh_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    backend.reset_client()
    monkeypatch.setattr(backend, "_announced", set())  # as in a new process
    yield
    backend.reset_client()


@pytest.fixture
def requests(testdata: Path) -> pd.DataFrame:
    return pb.build_requests(pb.load_portfolio(testdata / "portfolio.csv")).head(4)


@pytest.fixture
def local_run(requests: pd.DataFrame, tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(jobs, results) of a batch run on the embedded server, as a user without a key gets."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pb.SimulatedBackendWarning)
        jobs = pb.poll(pb.submit(pb.to_jsonl(requests, tmp_path / "shards")), progress=False)
        return jobs, pb.aggregate_df(jobs, requests)


def golden(testdata: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(requests, results) of testdata's batch files: OpenAI's own answers."""
    requests = pb.build_requests(pb.load_portfolio(testdata / "portfolio.csv"))
    results = pb.aggregate_df(
        None,
        requests,
        output_files=[testdata / "batch" / "output.jsonl"],
        error_files=[testdata / "batch" / "errors.jsonl"],
    )
    return requests, results


def simulated_warnings(record: Any) -> list[warnings.WarningMessage]:
    return [w for w in record if issubclass(w.category, pb.SimulatedBackendWarning)]


# -- the frame ---------------------------------------------------------------------------------


def test_a_local_run_names_its_engine_and_keeps_the_requested_model(local_run) -> None:
    jobs, results = local_run
    assert jobs["backend"].eq("local:embedded:rules").all()
    assert results.attrs["backend"] == "local:embedded:rules"
    assert results.attrs["engine"] == "rules" and results.attrs["simulated"] is True
    assert (results["status"] == "succeeded").all()
    assert results["model"].eq("local:rules").all()
    assert results["requested_model"].eq("gpt-4o-mini").all()
    assert results.columns[-2:].tolist() == ["model", "requested_model"]


def test_a_local_runs_cost_is_the_requested_models_batch_price(local_run) -> None:
    _, results = local_run
    tokens = results[["prompt_tokens", "completion_tokens"]].astype(int)
    by_hand = tokens["prompt_tokens"] * BATCH_IN + tokens["completion_tokens"] * BATCH_OUT
    assert results["cost_usd"].tolist() == pytest.approx(by_hand.tolist(), rel=1e-9)
    assert results["cost_usd"].gt(0).all()


def test_run_sync_on_a_served_server_is_labelled_by_the_answers_fingerprint(
    openai_client: Any, requests: pd.DataFrame
) -> None:
    # A standalone `portfolio-batch serve` is reached like any OpenAI-compatible server: only
    # the answers themselves say that they are simulated.
    results = pb.run_sync(requests, client=openai_client, progress=False)
    assert results.attrs["backend"].startswith("local:http://127.0.0.1:")
    assert results.attrs["engine"] == "rules" and results.attrs["simulated"] is True
    assert results["model"].eq("local:rules").all()
    assert results["requested_model"].eq("gpt-4o-mini").all()
    row = results.iloc[0]
    sync_price = row["prompt_tokens"] * 0.15 / 1e6 + row["completion_tokens"] * 0.60 / 1e6
    assert row["cost_usd"] == pytest.approx(sync_price, rel=1e-9)


def test_embedded_answers_without_a_fingerprint_are_labelled_by_the_backend() -> None:
    # /v1/responses bodies carry no system_fingerprint: the embedded backend's name says it.
    frame = pd.DataFrame(
        {
            "custom_id": ["r-1"],
            "url": ["/v1/responses"],
            "body": [{"model": "gpt-4o-mini", "input": "Review NVDA in one sentence."}],
        }
    ).set_index("custom_id", drop=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pb.SimulatedBackendWarning)
        results = pb.run_sync(frame, progress=False)
    assert results["status"].tolist() == ["succeeded"]
    assert results["model"].tolist() == ["local:rules"]
    assert results["requested_model"].tolist() == ["gpt-4o-mini"]
    assert results.attrs["engine"] == "rules" and results.attrs["simulated"] is True


def test_answers_from_a_real_api_are_not_simulated(testdata: Path) -> None:
    _, results = golden(testdata)
    assert results.attrs["simulated"] is False and results.attrs["engine"] is None
    assert results.attrs["backend"] is None  # files given by hand: no backend to name
    answered = results["model"].notna()
    assert answered.sum() == 37
    assert results.loc[answered, "model"].eq("gpt-4o-mini-2024-07-18").all()
    assert results["requested_model"].eq("gpt-4o-mini").all()
    row = results[answered].iloc[0]
    assert row["cost_usd"] == pytest.approx(
        cost_usd("gpt-4o-mini-2024-07-18", row["prompt_tokens"], row["completion_tokens"], 0)
    )


def test_a_local_fingerprint_in_a_file_marks_its_rows_and_prices_the_requested_model(
    testdata: Path, tmp_path: Path
) -> None:
    # Asked for gpt-4o: OpenAI's answer (gpt-4o-mini-2024-07-18, as an Azure deployment may
    # answer) is priced on what answered, the local server's on what was asked for.
    requests = pb.build_requests(
        pb.load_portfolio(testdata / "portfolio.csv").head(2), model="gpt-4o"
    )
    line = orjson.loads((testdata / "batch" / "output.jsonl").read_bytes().splitlines()[0])
    usage = line["response"]["body"]["usage"]
    pt, ct = usage["prompt_tokens"], usage["completion_tokens"]
    real = {**line, "custom_id": requests.index[0]}
    local = orjson.loads(orjson.dumps({**line, "custom_id": requests.index[1]}))
    local["response"]["body"]["system_fingerprint"] = "fp_local_smollm2"
    local["response"]["body"]["model"] = "gpt-4o"  # the local server echoes the request's
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(x) for x in (real, local)) + b"\n")
    results = pb.aggregate_df(None, requests, output_files=[path])
    assert results["model"].tolist() == ["gpt-4o-mini-2024-07-18", "local:smollm2"]
    assert results["requested_model"].tolist() == ["gpt-4o", "gpt-4o"]
    assert results.attrs["engine"] == "smollm2" and results.attrs["simulated"] is True
    # gpt-4o-mini at batch prices, then gpt-4o's: $1.25 / $5.00 per million tokens
    assert results["cost_usd"].tolist() == pytest.approx(
        [pt * BATCH_IN + ct * BATCH_OUT, pt * 1.25 / 1e6 + ct * 5.0 / 1e6], rel=1e-9
    )


def test_merge_results_keeps_where_each_part_came_from(local_run, testdata: Path) -> None:
    _, local = local_run
    _, real = golden(testdata)
    merged = pb.merge_results(real, local)
    assert merged.attrs["simulated"] is True
    assert merged.attrs["engine"] == "rules"
    assert merged.attrs["backend"] == "local:embedded:rules"
    assert pb.merge_results(real, real).attrs["simulated"] is False


# -- the warning -------------------------------------------------------------------------------


def test_picking_the_embedded_server_warns_once_per_process(requests: pd.DataFrame) -> None:
    with pytest.warns(pb.SimulatedBackendWarning, match=NOTICE) as record:
        pb.run_sync(requests.head(1), progress=False)
    (warning,) = simulated_warnings(record)
    assert warning.filename == __file__  # the user's line, not the library's call of client()
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        pb.client()
        backend.reset_client()  # a fresh server: the user has been told already
        pb.client()
    assert simulated_warnings(again) == []


def test_the_warning_names_a_misspelt_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-" + "typo-value-never-shown"
    monkeypatch.setenv("OPENAI_APIKEY", secret)
    monkeypatch.setenv("openai_api_key", secret)
    with pytest.warns(pb.SimulatedBackendWarning) as record:
        pb.client()
    (warning,) = simulated_warnings(record)
    text = str(warning.message)
    assert re.match(NOTICE, text)
    assert text.endswith("Found OPENAI_APIKEY, openai_api_key: did you mean OPENAI_API_KEY?")
    assert secret not in text
    assert backend.key_typos(
        {"OPENAI_KEY": "x", "OPENAI_API_TOKEN": "x", "OPENAI_API_KEY": "x"}
    ) == [
        "OPENAI_API_TOKEN",
        "OPENAI_KEY",
    ]
    assert backend.key_typos({"OPENAI_APIKEY": ""}) == []  # set but empty: not a key


def test_an_explicit_engine_with_a_key_set_says_why_it_runs_offline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-" + "test-ignored")
    with pytest.warns(pb.SimulatedBackendWarning, match=r"^engine='rules' given: running offline"):
        pb.client(engine="rules")


# -- the CLI -----------------------------------------------------------------------------------


def test_the_cli_highlights_the_offline_run_and_labels_every_output(tmp_path: Path) -> None:
    portfolio = tmp_path / "p.csv"
    frame = pd.read_csv(PORTFOLIO).head(3)
    frame["weight"] /= frame["weight"].sum()
    frame.loc[0, "notes"] = "#1 holding, by weight"  # a '#' in text must survive the notice
    frame.to_csv(portfolio, index=False)
    out = tmp_path / "out"
    env = cli_env(OPENAI_APIKEY="x")
    proc = run_cli("analyze-risk", portfolio, "--yes", "--out", out, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert re.search(NOTICE + r"\s+Found OPENAI_APIKEY: did you mean OPENAI_API_KEY\?", proc.stderr)
    assert "SimulatedBackendWarning" not in proc.stderr  # the line, not Python's warning text
    assert proc.stdout.index(BANNER) < proc.stdout.index("Summary")
    assert re.search(r"Cost at OpenAI batch prices\s+\$0\.\d{4}", proc.stdout)
    assert "Actual cost" not in proc.stdout

    csv_path = out / "results.csv"
    first = csv_path.read_text(encoding="utf-8-sig").splitlines()[0]
    assert first.startswith("# Simulated: answers from the offline local rules engine")
    assert "," not in first and "skiprows=1" in first
    csv = pd.read_csv(csv_path, skiprows=1)
    assert csv["model"].eq("local:rules").all() and len(csv) == 3
    assert csv.loc[0, "notes"] == "#1 holding, by weight"
    parquet = pd.read_parquet(out / "results.parquet")
    assert parquet.attrs == {
        "backend": "local:embedded:rules",
        "engine": "rules",
        "simulated": True,
    }

    doc = (out / "report.html").read_text(encoding="utf-8")
    assert doc.index(BANNER) < doc.index("<table")


def test_the_cli_line_is_bold_yellow(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from portfolio_batch.cli import _pipeline

    console = Console(record=True, force_terminal=True, color_system="standard", width=400)
    monkeypatch.setattr(_pipeline, "err", console)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pb.SimulatedBackendWarning)  # the CLI prints, never warns
        _pipeline.make_client(None)
    text = console.export_text(styles=True)
    assert re.search(r"\x1b\[1;33m" + NOTICE, text), repr(text)


# -- summary and report ------------------------------------------------------------------------


def test_the_summary_of_a_local_run_says_simulated_and_prices_at_openai(local_run) -> None:
    _, results = local_run
    summary = pb.summarize(results)
    text = str(summary).splitlines()
    assert text[0] == BANNER
    assert re.match(r"4/4 succeeded; cost at OpenAI batch prices \$\d\.\d{4}", text[1])
    metrics = dict(summary.to_frame().itertuples(index=False))
    assert "actual_cost_usd" not in metrics
    assert metrics["cost_usd_at_openai_batch_prices"] == pytest.approx(results["cost_usd"].sum())
    shown = summary._repr_html_()
    assert shown.index("Simulated: answers from") < shown.index("<table")


def test_sync_results_are_labelled_at_synchronous_prices(requests: pd.DataFrame) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pb.SimulatedBackendWarning)
        results = pb.run_sync(requests.head(2), progress=False)
    summary = pb.summarize(results)
    assert summary.banner is not None and summary.banner.endswith(
        "would cost at OpenAI synchronous prices."
    )
    assert summary.cost_label == "cost at OpenAI synchronous prices"


def test_the_report_of_a_local_run_starts_with_the_banner(local_run, tmp_path: Path) -> None:
    jobs, results = local_run
    doc = pb.report(results, path=tmp_path / "r.html", jobs=jobs).read_text(encoding="utf-8")
    body = doc.split("<body>", 1)[1]
    assert body.index('class="simulated"') < body.index("<table")
    assert body.index(BANNER) < body.index("<h2>")
    meta = dict(re.findall(r'<tr><td class="item">([^<]*)</td><td>([^<]*)</td></tr>', doc))
    assert meta["Cost at OpenAI batch prices"].startswith("no estimate · this run would cost $0.0")
    assert meta["Cost at OpenAI batch prices"].endswith(" at OpenAI batch prices")
    assert not any("actual" in k.lower() for k in meta)
    assert meta["model (what answered)"] == "local:rules"
    assert meta["requested model"] == "gpt-4o-mini"
    assert meta["backend"] == "local:embedded:rules"


def test_the_report_and_summary_of_real_answers_have_no_banner(
    testdata: Path, tmp_path: Path
) -> None:
    _, results = golden(testdata)
    doc = pb.report(results, path=tmp_path / "r.html", charts=False).read_text(encoding="utf-8")
    assert "Simulated" not in doc and 'class="simulated"' not in doc
    meta = dict(re.findall(r'<tr><td class="item">([^<]*)</td><td>([^<]*)</td></tr>', doc))
    assert "actual $" in meta["Cost, estimated vs actual"]
    summary = pb.summarize(results)
    assert summary.banner is None and str(summary).startswith("36/40 succeeded; actual cost $")


# -- the notebook panel ------------------------------------------------------------------------


def test_the_progress_panel_shows_a_banner_for_a_local_backend(local_run) -> None:
    jobs, _ = local_run
    panel = ProgressPanel(jobs, display=False)
    assert panel.banner is not None and panel.banner.startswith(
        "Simulated: these batches run on the offline local server (engine rules)"
    )
    assert html.escape(panel.banner) in panel._banner.value
    assert panel.widget.children[0] is panel._banner  # above the shards
    assert panel.to_text().splitlines()[0] == panel.banner
    saved = panel.to_html()
    assert saved.index("pb-banner") < saved.index("<table")

    real = jobs.assign(backend="openai")
    panel.update(real)
    assert panel.banner is None and panel._banner.value == ""
    assert backend_banner(jobs.assign(backend="local:http://127.0.0.1:8000/v1")).startswith(
        "Not OpenAI: these batches run on the server at http://127.0.0.1:8000/v1"
    )
