"""The progress panel and the jobs table: values, styles, the saved-notebook fallback, cost of an
update, and a real kernel run (nbclient) that shows what a notebook stores."""

from __future__ import annotations

import sys
import time

import nbformat
import pandas as pd
import pytest

from portfolio_batch import _widgets as widgets
from portfolio_batch.errors import InputError, MissingDependencyError

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def jobs_frame(statuses, *, completed=None, failed=None, n=20) -> pd.DataFrame:
    """A jobs frame shaped like submit()/poll()'s (design.md: Jobs)."""
    k = len(statuses)
    return pd.DataFrame(
        {
            "run_id": ["run_1"] * k,
            "shard": list(range(k)),
            "batch_id": [None if s == "queued" else f"batch_{i}" for i, s in enumerate(statuses)],
            "status": statuses,
            "input_file_id": [f"file-{i}" for i in range(k)],
            "output_file_id": None,
            "error_file_id": None,
            "sha256": "0" * 64,
            "n_requests": [n] * k,
            "completed": completed or [0] * k,
            "failed": failed or [0] * k,
            "est_cost_usd": [0.01] * k,
            "created_at": [1_700_000_000 + i for i in range(k)],
            "model": "gpt-4.1-mini",
            "endpoint": "/v1/chat/completions",
            "path": [f"/tmp/shard-{i}.jsonl" for i in range(k)],
            "backend": "local",
        }
    )


def test_in_notebook_is_false_outside_a_kernel():
    assert widgets.in_notebook() is False


def test_panel_shows_one_line_per_shard_and_overall_counts():
    jobs = jobs_frame(
        ["in_progress", "validating", "queued"], completed=[12, 0, 0], failed=[3, 0, 0]
    )
    before = jobs.copy()
    panel = widgets.ProgressPanel(jobs, est_cost_usd=0.25, display=False)
    assert [r["status"] for r in panel.rows] == ["in_progress", "validating", "queued"]
    assert panel.rows[2]["batch_id"] == "(waiting for queue capacity)"
    assert panel.totals == {"completed": 12, "failed": 3, "total": 60}
    assert len(panel._shard_box.children) == 3
    label, bar, counts = panel._lines[("run_1", "0")]
    assert (bar.value, bar.max, bar.bar_style) == (15, 20, "info")
    assert "batch_0" in label.value and "in_progress" in label.value
    assert "12 done" in counts.value and "3 failed" in counts.value
    assert (panel._overall_bar.value, panel._overall_bar.max) == (15, 60)
    assert "$0.2500" in panel._footer.value
    assert panel.eta() is not None and panel.eta() > 0
    assert not panel.done
    pd.testing.assert_frame_equal(jobs, before)


def test_finalizing_is_its_own_state_and_terminal_states_differ():
    panel = widgets.ProgressPanel(jobs_frame(["finalizing"], completed=[20]), display=False)
    assert not panel.done
    assert "finalizing" in panel.to_text()
    badge = widgets.STATUS_STYLES["finalizing"][0]
    assert badge != widgets.STATUS_STYLES["completed"][0]
    assert badge in panel._lines[("run_1", "0")][0].value
    terminal = ["completed", "failed", "expired", "cancelled"]
    assert len({widgets.STATUS_STYLES[s][0] for s in terminal}) == 4
    panel.update(jobs_frame(terminal, completed=[20, 0, 5, 2], failed=[0, 20, 15, 0]))
    assert panel.done and panel.eta() == 0.0
    styles = [panel._lines[("run_1", str(i))][1].bar_style for i in range(4)]
    assert styles == ["success", "danger", "warning", "danger"]
    assert panel._overall_bar.bar_style == "danger"  # some requests failed


def test_update_rebuilds_lines_only_when_shards_change():
    panel = widgets.ProgressPanel(jobs_frame(["in_progress"]), display=False)
    first = panel._lines[("run_1", "0")]
    panel.update(jobs_frame(["in_progress"], completed=[5]))
    assert panel._lines[("run_1", "0")] is first
    assert first[1].value == 5
    panel.update(jobs_frame(["in_progress", "validating"], completed=[6, 0]))
    assert len(panel._shard_box.children) == 2
    assert panel._lines[("run_1", "0")][1].value == 6


def test_total_falls_back_to_shard_size_while_validating():
    panel = widgets.ProgressPanel(jobs_frame(["validating"], n=50), display=False)
    assert panel.totals["total"] == 50
    assert panel.eta() is None
    assert "ETA –" in panel._footer.value


def test_update_is_cheap():
    panel = widgets.ProgressPanel(jobs_frame(["in_progress"] * 10), display=False)
    frames = [jobs_frame(["in_progress"] * 10, completed=[i % 20] * 10) for i in range(200)]
    start = time.perf_counter()
    for frame in frames:
        panel.update(frame)
    per_update = (time.perf_counter() - start) / len(frames)
    assert per_update < 0.02, f"{per_update * 1000:.1f} ms per update of 10 shards"


def test_mimebundle_carries_widget_and_text_fallbacks():
    panel = widgets.ProgressPanel(
        jobs_frame(["completed", "failed"], completed=[20, 0], failed=[0, 20]), display=False
    )
    bundle = panel._repr_mimebundle_()
    assert bundle[WIDGET_MIME]["model_id"] == panel.widget.model_id
    assert "batch_0" in bundle["text/plain"] and "completed" in bundle["text/plain"]
    assert "overall: 20 completed, 20 failed / 40" in bundle["text/plain"]
    html = bundle["text/html"]
    assert 'class="pb-progress-panel"' in html and "batch_1" in html
    assert widgets.STATUS_STYLES["failed"][0] in html


def test_panel_escapes_batch_ids():
    jobs = jobs_frame(["in_progress"])
    jobs.loc[0, "batch_id"] = "<script>alert(1)</script>"
    panel = widgets.ProgressPanel(jobs, display=False)
    assert "<script>" not in panel.to_html()
    assert "&lt;script&gt;" in panel.to_html()


def test_panel_rejects_a_frame_without_status():
    with pytest.raises(InputError, match=r"'status'.*submit\(\) or poll\(\)"):
        widgets.ProgressPanel(pd.DataFrame({"batch_id": ["b"]}), display=False)


def test_missing_ipywidgets_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'portfolio_batch\[notebook\]'"):
        widgets.ProgressPanel(jobs_frame(["queued"]), display=False)


def test_jobs_table_is_a_rich_escaped_table_that_stays_a_dataframe():
    jobs = jobs_frame(["in_progress", "completed"], completed=[5, 20])
    jobs.loc[0, "model"] = "<b>m</b>"
    table = widgets.jobs_table(jobs)
    assert isinstance(table, pd.DataFrame)
    pd.testing.assert_frame_equal(pd.DataFrame(table), jobs)
    html = table._repr_html_()
    assert html.startswith('<table class="pb-jobs">')
    assert html.count("<tr>") == 3
    assert "&lt;b&gt;m&lt;/b&gt;" in html and "<b>m</b>" not in html
    assert widgets.STATUS_STYLES["completed"][0] in html
    assert "2023-11-14 22:13:20" in html  # created_at as UTC time
    assert "width:25%" in html  # 5 of 20 requests
    # the registry's frame carries created_at as UTC datetimes
    as_dates = jobs.assign(created_at=pd.to_datetime(jobs["created_at"], unit="s", utc=True))
    assert "2023-11-14 22:13:20" in widgets.jobs_table_html(as_dates)
    # slicing keeps the rich display
    assert isinstance(table.head(1), widgets.JobsFrame)
    assert table.head(1)._repr_html_().count("<tr>") == 2


def test_panel_in_a_real_kernel_saves_widget_state_and_the_final_fallback(tmp_path):
    """What a notebook stores: the live widget view, its state, and an up-to-date HTML fallback."""
    from nbclient import NotebookClient

    setup = (
        "import pandas as pd\n"
        "from portfolio_batch._widgets import ProgressPanel, in_notebook\n"
        "assert in_notebook()\n"
        "def frame(status, done):\n"
        "    return pd.DataFrame({'run_id': ['r'], 'shard': [0], 'batch_id': ['batch_x'],\n"
        "        'status': [status], 'n_requests': [40], 'completed': [done], 'failed': [0],\n"
        "        'est_cost_usd': [0.02]})\n"
        "panel = ProgressPanel(frame('validating', 0))"
    )
    finish = "panel.update(frame('in_progress', 10))\npanel.update(frame('completed', 40))\npanel.close()"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(setup), nbformat.v4.new_code_cell(finish)]
    NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = nb.cells[0].outputs
    assert len(outputs) == 1, outputs
    data = outputs[0]["data"]
    assert WIDGET_MIME in data
    # the saved fallback shows the final state, not the first one
    assert "completed" in data["text/html"] and "validating" not in data["text/html"]
    assert "overall: 40 completed, 0 failed / 40" in data["text/plain"]
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert data[WIDGET_MIME]["model_id"] in state
    bars = [m["state"] for m in state.values() if m["model_name"] == "IntProgressModel"]
    assert {(b["value"], b["max"]) for b in bars} == {(40, 40)}


# -- the run card (pb.start) and the runs table ---------------------------------------------------


def run_view(**changes) -> widgets.RunView:
    base = dict(
        run_id="run-1",
        title="Risk review <40>",
        model="gpt-4.1-mini",
        status="in_progress",
        done=False,
        banner="Simulated: local server",
        shards=[
            {
                "shard": "0",
                "run_id": "run-1",
                "batch_id": "batch_a",
                "status": "completed",
                "completed": 2,
                "failed": 0,
                "total": 2,
                "canary": True,
                "reasons": "",
            },
            {
                "shard": "1",
                "run_id": "run-1",
                "batch_id": "batch_<b>",
                "status": "in_progress",
                "completed": 10,
                "failed": 3,
                "total": 38,
                "canary": False,
                "reasons": "invalid_json 2, server_error 1",
            },
        ],
        canary_note="Canary passed: 2 of 2 answers usable.",
        total=40,
        finished=15,
        failed=3,
        held=0,
        eta_s=75.0,
        est_cost_usd=0.0057,
        billed_usd=0.0004,
        simulated=True,
        as_of=1_700_000_000.0,
        stalled=False,
        quiet_s=1.0,
        stall_after_s=30.0,
        reasons="invalid_json 2, server_error 1",
        reviewed=2,
        top=pd.DataFrame(
            {"ticker": ["NVDA", "KO"], "risk_score": [81, 12], "rationale": ["<i>x</i>", "y"]}
        ),
        notes=["warning: checking batch_x failed; trying again"],
        error=None,
        message=None,
        watching=True,
        can_retry=False,
    )
    base.update(changes)
    return widgets.RunView(**base)


def test_run_card_shows_shards_canary_reasons_costs_eta_and_the_first_answers():
    card = widgets.RunCard(on_cancel=lambda: None, on_retry=lambda: None, on_report=lambda: None)
    card.show(run_view())
    assert "Simulated: local server" in card.banner.value
    assert "in_progress" in card.header.value and "as of " in card.header.value
    assert "Risk review &lt;40&gt;" in card.header.value
    assert len(card.shard_box.children) == 2
    canary_label, canary_bar, _ = card.lines[("run-1", "0")]
    assert "canary" in canary_label.value and (canary_bar.value, canary_bar.max) == (2, 2)
    label, bar, counts = card.lines[("run-1", "1")]
    assert "batch_&lt;b&gt;" in label.value and (bar.value, bar.max) == (13, 38)
    assert "invalid_json 2, server_error 1" in counts.value
    assert (card.overall_bar.value, card.overall_bar.max) == (15, 40)
    assert "12 done, 3 failed of 40 requests · ETA 1:15" in card.summary.value
    assert (
        "estimated $0.0057 (answers at max_tokens) · so far $0.0004 at OpenAI batch prices (simulated)"
        in card.summary.value
    )
    assert "Canary passed" in card.flags.value and "trying again" in card.flags.value
    assert "2 of 40 reviewed" in card.table.value and "hsl(" in card.table.value
    assert "&lt;i&gt;x&lt;/i&gt;" in card.table.value
    assert not card.cancel_button.disabled and card.retry_button.disabled
    assert card.report_button.disabled
    first_lines = card.lines
    card.show(run_view(finished=20))
    assert card.lines is first_lines  # same shards: values change, widgets stay


def test_run_card_at_the_end_and_when_stalled():
    card = widgets.RunCard(on_cancel=lambda: None, on_retry=lambda: None, on_report=lambda: None)
    card.show(run_view(stalled=True, quiet_s=95.0, stall_after_s=30.0))
    assert "No movement for 1:35, longer than expected (0:30)" in card.flags.value
    card.show(run_view(status="completed", done=True, can_retry=True, eta_s=0.0, simulated=False))
    assert card.cancel_button.disabled and not card.retry_button.disabled
    assert not card.report_button.disabled
    assert "ETA" not in card.summary.value and "billed so far" in card.summary.value
    assert card.overall_bar.bar_style == "warning"  # completed, some answers unusable


def test_run_card_buttons_call_back():
    calls = []
    card = widgets.RunCard(
        on_cancel=lambda: calls.append("cancel"),
        on_retry=lambda: calls.append("retry"),
        on_report=lambda: calls.append("report"),
    )
    card.cancel_button.click()
    card.retry_button.click()
    card.report_button.click()
    assert calls == ["cancel", "retry", "report"]


def test_run_card_static_html_and_text_are_the_fallbacks():
    view = run_view(error="Watching stopped: <boom>")
    html = widgets.run_card_html(view)
    assert 'class="pb-run-card"' in html and "batch_&lt;b&gt;" in html
    assert "Watching stopped: &lt;boom&gt;" in html and "<boom>" not in html
    text = widgets.run_card_text(view)
    assert "shard 1  batch_<b>  in_progress" in text and "(invalid_json 2, server_error 1)" in text
    assert "2 of 40 reviewed" in text


def test_results_table_colours_scores_and_escapes():
    frame = pd.DataFrame(
        {
            "ticker": ["<x>", "B"],
            "weight": [0.1234, None],
            "risk_score": pd.array([100, None], dtype="Int64"),
            "risk_level": ["high", None],
            "drivers": [["a", "b"], None],
            "status": ["succeeded", "failed"],
        }
    )
    html = widgets.results_table_html(frame)
    assert "&lt;x&gt;" in html and "12.34%" in html and "a; b" in html
    assert widgets.score_style(100) in html and "hsl(0," in html
    assert widgets.STATUS_STYLES["failed"][0] in html
    assert widgets.score_style(0).startswith("background:hsl(120,")
    assert widgets.score_style(None) == "color:#9e9e9e"


def test_runs_table_renders_badges_and_costs():
    frame = pd.DataFrame(
        {
            "run_id": ["run-<1>"],
            "created_at": [pd.Timestamp("2026-12-01 10:00:00", tz="UTC")],
            "status": ["held"],
            "est_cost_usd": [0.0123],
            "billed_usd": [None],
        }
    )
    html = widgets.RunsFrame(frame)._repr_html_()
    assert "run-&lt;1&gt;" in html and "2026-12-01 10:00:00" in html
    assert "$0.0123" in html and "<td>–</td>" in html and "pb.attach(run_id)" in html
