"""pb.start / Run / pb.runs / pb.attach on the real local server: a run that returns at once, a
canary that sends a small shard first and holds the rest back when its answers are bad, a plan in
the registry that a new process (a restarted kernel) attaches to without sending anything twice,
and a background watcher that only ever sets widget values."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch import _widgets as widgets
from portfolio_batch._run import CanaryHeldError, Run
from portfolio_batch.errors import BudgetExceededError, InputError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def requests(testdata: Path) -> pd.DataFrame:
    return pb.build_requests(pb.load_portfolio(testdata / "portfolio.csv"))


def server_batches(client: Any) -> list[Any]:
    return list(client.batches.list(limit=100))


def test_start_returns_a_run_and_results_keep_the_portfolio_columns(local_server, requests):
    client = local_server.client()
    run = pb.start(requests, client=client, budget_usd=1.0)
    assert isinstance(run, Run)
    assert run.keys and all(r == run.run_id for r, _ in run.keys)
    results = run.wait().results()
    assert run.status == "completed" and run.done
    assert len(results) == 40 and set(results["status"]) == {"succeeded"}
    # the requests frame went with the run: its input columns are in the results
    assert {"sector", "weight", "risk_score"} <= set(results.columns)
    jobs = run.jobs
    assert list(jobs["status"]) == ["completed"]
    assert jobs["batch_id"].iloc[0] in {b.id for b in server_batches(client)}


def test_budget_is_checked_for_the_whole_run_before_anything_is_sent(local_server, requests):
    client = local_server.client()
    with pytest.raises(BudgetExceededError, match=r"budget_usd=\$0\.0010.*Nothing was sent"):
        pb.start(requests, client=client, budget_usd=0.001, canary=0.05)
    assert server_batches(client) == []
    assert list(client.files.list()) == []
    assert pb.runs().empty


def test_canary_goes_first_and_the_rest_only_after_its_answers(local_server, requests):
    client = local_server.client()
    run = pb.start(requests, client=client, canary=0.05)
    # only the canary left before start() returned: 2 of 40 requests (5 %), spread over the frame
    sent = server_batches(client)
    assert len(sent) == 1 and sent[0].request_counts.total in (0, 2)
    canary_ids = run.plan["canary"]["ids"]
    assert len(canary_ids) == 2 and canary_ids[0] == requests.index[0]
    assert canary_ids[1] == requests.index[-1]
    results = run.wait().results()
    assert set(results["status"]) == {"succeeded"} and len(results) == 40
    by_id = {b.id: b for b in server_batches(client)}
    jobs = run.jobs
    canary, rest = (by_id[b] for b in jobs["batch_id"])
    assert canary.request_counts.total == 2 and rest.request_counts.total == 38
    assert rest.created_at >= canary.completed_at  # sent after the canary's answers
    assert run.plan["canary"]["verdict"] == "passed"
    assert "Canary passed: 2 of 2" in run.view().canary_note


def test_a_bad_canary_holds_the_rest_and_costs_only_the_canary(local_server, testdata):
    # max_tokens=5 cuts every answer: invalid_output, the kind of mistake a canary must catch
    bad = pb.build_requests(pb.load_portfolio(testdata / "portfolio.csv"), max_tokens=5)
    client = local_server.client()
    run = pb.start(bad, client=client, canary=4)
    with pytest.raises(CanaryHeldError, match=r"4 of 4 answers not usable \(invalid_json 4\)"):
        run.wait()
    assert run.status == "held" and run.done
    assert len(server_batches(client)) == 1
    assert pb.runs()["status"].tolist() == ["held"]
    assert "36 requests were not sent" in run.view().canary_note
    run.release()
    run.wait(raise_on_failed=False)
    assert len(server_batches(client)) == 2
    assert run.results()["status"].value_counts().to_dict() == {"invalid_output": 40}


def _start_in_another_process(server: Any, home: str, code: str) -> str:
    """Run ``code`` in a fresh interpreter (a kernel before its restart); returns its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_"))}
    env.update(
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=server.base_url,
        PORTFOLIO_BATCH_HOME=home,
        PYTHONPATH=str(ROOT),
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def test_attach_in_a_new_process_carries_on_without_sending_twice(local_server, testdata):
    local_server.configure(request_delay=0.05)
    home = os.environ["PORTFOLIO_BATCH_HOME"]
    run_id = _start_in_another_process(
        local_server,
        home,
        "import portfolio_batch as pb\n"
        f"r = pb.build_requests(pb.load_portfolio({str(testdata / 'portfolio.csv')!r}))\n"
        "print(pb.start(r, canary=0.05).run_id)\n",
    )
    client = local_server.client()
    assert len(server_batches(client)) == 1  # the process ended with its canary running
    listed = pb.runs()
    assert listed["run_id"].tolist() == [run_id]
    assert listed["status"].iloc[0] in ("canary", "validating", "in_progress", "finalizing")
    run = pb.attach(run_id, client=client)
    results = run.wait().results()
    assert len(results) == 40 and set(results["status"]) == {"succeeded"}
    # the requests frame was saved with the run: a new process still gets the input columns
    assert results["sector"].notna().all()
    batches = {b.id for b in server_batches(client)}
    assert len(batches) == 2 and set(run.jobs["batch_id"]) == batches
    again = pb.attach(run_id, client=client)
    assert again.view().reviewed == 40  # a finished run's card shows its answers at once
    assert set(again.wait().jobs["batch_id"]) == batches and len(server_batches(client)) == 2
    assert pb.runs()["status"].tolist() == ["completed"]


def test_attach_picks_up_a_run_made_with_submit(openai_client, requests, tmp_path):
    jobs = pb.submit(pb.to_jsonl(requests, tmp_path / "shards"), client=openai_client)
    run_id = jobs["run_id"].iloc[0]
    run = pb.attach(run_id, client=openai_client)
    results = run.wait().results()  # requests read back from the shard files
    assert len(results) == 40 and set(results["status"]) == {"succeeded"}
    assert list(run.jobs["batch_id"]) == list(jobs["batch_id"])
    with pytest.raises(Exception, match=r"No run or batch 'run-nope'"):
        pb.attach("run-nope", client=openai_client)


def test_runs_lists_newest_first_with_status_and_cost_and_reruns_once(local_server, requests):
    client = local_server.client()
    first = pb.start(requests.head(10), client=client).wait()
    second = pb.start(requests.tail(10), client=client).wait()
    listed = pb.runs()
    assert listed["run_id"].tolist() == [second.run_id, first.run_id]
    row = listed.iloc[0]
    assert (row["status"], row["n_requests"], row["completed"], row["failed"]) == (
        "completed",
        10,
        10,
        0,
    )
    assert row["est_cost_usd"] > row["billed_usd"] > 0
    # the same requests again: the same batch, and one line in the list
    again = pb.start(requests.head(10), client=client).wait()
    assert set(again.jobs["batch_id"]) == set(first.jobs["batch_id"])
    assert len(server_batches(client)) == 2
    assert len(pb.runs()) == 2
    assert "pb-runs" in pb.runs()._repr_html_()


def test_results_before_the_end_say_what_to_do(local_server, requests):
    local_server.configure(request_delay=0.2)
    run = pb.start(requests, client=local_server.client())
    with pytest.raises(InputError, match=r"still .*run\.wait\(\) first.*partial=True"):
        run.results()
    partial = run.results(partial=True)
    assert len(partial) == 40 and "missing" in set(partial["status"])
    run.cancel()
    run.wait(raise_on_failed=False)
    assert run.status == "cancelled" and run.done
    view = run.view()
    # the requests the cancel cut off are counted by reason, and can be retried
    assert "cancelled" in view.reasons and view.can_retry


def test_retry_failed_resends_the_unanswered_and_lays_them_over(local_server, testdata):
    cut = pb.build_requests(pb.load_portfolio(testdata / "portfolio.csv"), max_tokens=5)
    client = local_server.client()
    run = pb.start(cut, client=client).wait()
    first = run.results()
    assert set(first["status"]) == {"invalid_output"}
    child = run.retry_failed(max_tokens=400)
    merged = child.wait().results()
    assert set(merged["status"]) == {"succeeded"} and set(merged["attempt"]) == {2}
    assert child.plan["parent_run_id"] == run.run_id
    assert len(server_batches(client)) == 2
    with pytest.raises(InputError, match=r"nothing to retry"):
        child.retry_failed()


def test_canary_and_start_refuse_bad_options(local_server, requests):
    client = local_server.client()
    for bad in (0, -1, 40, 1.0, True):
        with pytest.raises(InputError, match=r"canary="):
            pb.start(requests, client=client, canary=bad)
    with pytest.raises(InputError, match=r"canary_max_failed="):
        pb.start(requests, client=client, canary=0.1, canary_max_failed=1.0)
    with pytest.raises(InputError, match=r"requests frame .* or a manifest"):
        pb.start(requests[["ticker"]], client=client)
    with pytest.raises(InputError, match=r"metadata key 'pb_x'"):
        pb.start(requests, client=client, metadata={"pb_x": 1})
    assert server_batches(client) == []


# -- the background watcher -------------------------------------------------------------------------


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((threading.current_thread().name, record.getMessage()))


def test_watcher_sets_widget_values_only_and_keeps_its_logs_off_the_notebook(
    local_server, requests, capfd, monkeypatch
):
    """What the watcher thread may not do on ipykernel 7: print, display, or log to stderr (its
    output would land in whatever cell runs then, or nowhere). Its warnings go to the card."""
    displays: list[str] = []
    import IPython.display

    def record_display(*_a: Any, **_k: Any) -> None:
        displays.append(threading.current_thread().name)

    monkeypatch.setattr(IPython.display, "display", record_display)
    monkeypatch.setattr(IPython.display, "publish_display_data", record_display)
    recorder = _Recorder()
    logger = logging.getLogger("portfolio_batch")
    logger.addHandler(recorder)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        client = local_server.client(max_retries=0)
        run = pb.start(requests, client=client, canary=0.05)  # the canary is sent here
        # From here on only the watcher thread talks to the server. No SDK retries, and a quarter
        # of the status checks fail: poll logs a warning for each. (Faults before start would
        # also hit start's own look at the canary, in the main thread, where a warning on stderr
        # is right.)
        local_server.configure(
            request_delay=0.03, fault_rate_500=0.25, fault_endpoints={"batches.retrieve"}, seed=3
        )
        run._card = widgets.RunCard(
            on_cancel=run.cancel, on_retry=lambda: None, on_report=lambda: None
        )
        run.watch()  # judges the canary, sends the rest, collects the answers
        run._thread.join(timeout=120)
        assert not run.watching and run.status == "completed"
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(old_level)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert displays == []
    from_watcher = [m for name, m in recorder.records if name.startswith("pb-watch")]
    assert from_watcher == []
    notes = run.view().notes
    assert any("trying again" in n for n in notes), notes
    card = run._card
    assert "completed" in card.header.value
    assert (card.overall_bar.value, card.overall_bar.max) == (40, 40)
    assert "40 of 40 reviewed" in card.table.value
    assert len(card.shard_box.children) == 2
    assert "canary" in card.lines[(run.run_id, "0")][0].value
    assert card.cancel_button.disabled and not card.report_button.disabled


def test_watcher_error_is_shown_on_the_card_and_raised_by_wait(local_server, requests):
    client = local_server.client()
    run = pb.start(requests, client=client, watch=False)
    run._card = widgets.RunCard(on_cancel=run.cancel, on_retry=lambda: None, on_report=lambda: None)

    send = run._send_pending

    def boom() -> None:
        run._send_pending = send  # type: ignore[method-assign]  # once: the next round works
        raise RuntimeError("registry on fire")

    run._send_pending = boom  # type: ignore[method-assign]
    run.watch()
    run._thread.join(timeout=30)
    assert "Watching stopped: RuntimeError: registry on fire" in run._card.flags.value
    with pytest.raises(RuntimeError, match="registry on fire"):
        run.wait()  # what stopped the watcher is not lost, though a new round would work
    assert run.wait().status == "completed"


def test_card_flags_a_stall_and_gives_an_eta_from_observed_throughput(local_server, requests):
    local_server.configure(request_delay=0.05)
    run = pb.start(requests, client=local_server.client(), stall_after=0.3)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run.refresh()
        view = run.view()
        if 0 < view.finished < view.total and view.eta_s is not None:
            break
    assert view.eta_s is not None and 0 < view.eta_s < 60
    local_server.configure(request_delay=5.0)  # nothing moves for a while
    time.sleep(0.5)
    run._round()
    time.sleep(0.5)
    run._round()
    view = run.view()
    assert not view.done and view.stalled
    assert re.search(
        r"No movement for 0:0\d, longer than expected \(0:00\)", widgets.run_card_html(view)
    )
    local_server.configure(request_delay=0.0)
    run.cancel().wait(raise_on_failed=False)


def test_readme_run_card_example_runs_as_written(requests):
    import readme

    blocks = [b for b in readme.python_blocks(readme.section("notebooks")) if "pb.start" in b]
    assert len(blocks) == 1
    printed = readme.run_block(blocks[0], {"pb": pb, "requests": requests})
    assert printed == readme.expected_output(blocks[0]) == ["completed 40 3"]


def test_card_buttons_write_the_report_and_retry_under_the_card(
    local_server, testdata, monkeypatch, tmp_path
):
    """The buttons run on the kernel's main thread from a click: their outcome goes on the card."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(widgets, "in_notebook", lambda: True)
    cut = pb.build_requests(pb.load_portfolio(testdata / "portfolio.csv"), max_tokens=5)
    run = pb.start(cut, client=local_server.client(), display=False, watch=False).wait()
    run._make_card()
    card = run._card
    assert card.cancel_button.disabled and not card.report_button.disabled
    assert not card.retry_button.disabled  # every answer was cut at max_tokens
    card.report_button.click()
    report = tmp_path / "reports" / f"{run.run_id}.html"
    assert report.is_file() and "Report written" in card.message.value
    assert f'href="reports/{run.run_id}.html"' in card.message.value
    card.retry_button.click()
    assert len(run._children) == 1 and len(card.children_box.children) == 1
    child = run._children[0]
    assert f"as run {child.run_id}" in card.message.value
    child._thread.join(timeout=60)
    assert child.status == "completed" and set(child.results()["attempt"]) == {2}
    card.cancel_button.click()  # on a finished run: nothing to cancel, and no error either
    assert "Error" not in card.message.value


def test_claude_run_card_runs_and_report_show_estimate_costs_figure(
    local_server, testdata, monkeypatch, tmp_path
):
    """The run's estimate is estimate_cost's, at Anthropic's batch rates, on the card, in pb.runs()
    and in run.report() (which said "no estimate" before)."""
    root = local_server.base_url.removesuffix("/v1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", local_server.api_key)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", root)
    portfolio = pb.load_portfolio(testdata / "portfolio.csv")  # notebooks/02's portfolio
    requests = pb.build_requests(portfolio, model="claude-haiku-4-5")
    run = pb.start(requests, canary=0.05, display=False, watch=False).wait()
    assert run.plan["backend"].startswith("anthropic:")
    # By hand: 40 requests; their prompts are 12,370 tokens (o200k_base, estimate_cost's count;
    # to_jsonl's ~4-characters-a-token guess said 12,482) and each answer counts its
    # max_tokens=400, 16,000 in all. claude-haiku-4-5 batch rates are $0.50 and $2.50 per
    # million tokens (half of $1/$5): 12,370 * 0.5e-6 + 16,000 * 2.5e-6 = 0.006185 + 0.04 =
    # $0.046185 (the card said $0.046241: 12,482 * 0.5e-6 + 0.04, the guess, not estimate_cost).
    costs = run.cost_estimate()
    assert costs is not None
    assert (int(costs["input_tokens"].sum()), int(costs["output_tokens_est"].sum())) == (
        12_370,
        16_000,
    )
    assert costs["batch_cost_usd"].sum() == pytest.approx(0.046185, abs=1e-9)
    assert run.plan["est_cost_usd"] == pytest.approx(0.046185, abs=1e-9)  # canary + rest
    assert pb.runs()["est_cost_usd"].iloc[0] == pytest.approx(0.046185, abs=1e-9)
    assert "estimated $0.0462 (answers at max_tokens)" in run.view().cost_text()
    # ANTHROPIC_BASE_URL is this project's local server: the card says simulated, not billed
    assert run.plan["backend"] == f"anthropic:local:{root}"
    assert "at Anthropic batch prices (simulated)" in run.view().cost_text()
    assert f"Not Anthropic: these batches run on the server at {root}" in (run.view().banner or "")
    page = run.report(path=tmp_path / "report.html").read_text()
    assert "estimated $0.0462 · this run would cost $" in page
    assert "no estimate" not in page and "no cost estimate given" not in page
    assert "the estimate counts max_tokens of output per answer" in page


def test_run_report_prices_the_estimate_with_the_runs_prices(local_server, requests, tmp_path):
    """start(prices=...) is kept with the run: run.report() sets the same estimate against the
    actual cost, even after pb.attach in a new kernel."""
    model = requests["body"].iloc[0]["model"]
    # By hand: input free, output $100 per million tokens, so $50 at batch prices (half);
    # 10 answers at max_tokens=400 are 4,000 tokens: 4,000 * 50e-6 = $0.2000.
    prices = {model: {"input": 0, "output": 100}}
    run = pb.start(requests.head(10), client=local_server.client(), prices=prices).wait()
    assert run.plan["est_cost_usd"] == pytest.approx(0.2, abs=1e-12)
    assert "estimated $0.2000 (answers at max_tokens)" in run.view().cost_text()
    again = pb.attach(run.run_id, client=local_server.client(), display=False, watch=False)
    page = again.report(path=tmp_path / "report.html").read_text()
    assert "estimated $0.2000 · this run would cost $" in page
