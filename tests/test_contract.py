"""The data contract (portfolio_batch/_contract.py): the status sets cover OpenAI's statuses, the
result row and the results frame agree, every display takes its colours from the one table, and
no other module writes its own copy of a status set, a column list or a colour table."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch import _contract as contract
from portfolio_batch._decode import LINE_DECODER, failed_row, row_of
from portfolio_batch._validate import validator_for
from tests.test_aggregate import http_error_line, null_line, ok_line, write_jsonl

PACKAGE = Path(pb.__file__).resolve().parent
SCHEMAS = PACKAGE / "local" / "openapi" / "openai-schemas.json"
HEX = re.compile(r"^#[0-9a-f]{6}$")


def batch_statuses_in_openai_schema() -> set[str]:
    schema = orjson.loads(SCHEMAS.read_bytes())["components"]["schemas"]["Batch"]
    return set(schema["properties"]["status"]["enum"])


# -- statuses -------------------------------------------------------------------------------------


def test_every_openai_batch_status_is_in_exactly_one_set() -> None:
    allowed = batch_statuses_in_openai_schema()
    assert len(allowed) == 8  # the vendored schema really was read
    sets = {
        "ACTIVE": contract.ACTIVE,
        "CANCELLING": contract.CANCELLING,
        "TERMINAL": contract.TERMINAL,
    }
    for status in allowed:
        holders = [name for name, members in sets.items() if status in members]
        assert len(holders) == 1, f"{status!r} is in {holders or 'no set'}"
    assert set().union(*sets.values()) == allowed  # and no status OpenAI does not have
    assert set(contract.BATCH_STATUSES) == allowed
    assert len(contract.BATCH_STATUSES) == len(allowed)


def test_dead_is_every_status_that_will_not_finish_its_requests() -> None:
    # a batch still working, or completed, is reused; any other is replaced by a new batch
    allowed = batch_statuses_in_openai_schema()
    assert allowed - contract.ACTIVE - {"completed"} == contract.DEAD


def test_job_statuses_are_queued_then_the_batch_statuses_in_lifecycle_order() -> None:
    assert contract.JOB_STATUSES[0] == "queued"
    assert set(contract.JOB_STATUSES[1:]) == batch_statuses_in_openai_schema()
    order = contract.JOB_STATUSES
    assert order.index("validating") < order.index("in_progress") < order.index("finalizing")
    assert max(order.index(s) for s in contract.ACTIVE) < min(
        order.index(s) for s in contract.TERMINAL
    )


def test_aggregate_ranks_every_result_status() -> None:
    from portfolio_batch._aggregate import _RANK

    assert set(_RANK) == set(contract.RESULT_STATUSES)
    assert max(_RANK, key=_RANK.__getitem__) == "succeeded"
    assert min(_RANK, key=_RANK.__getitem__) == "missing"


# -- the result row and the results frame ---------------------------------------------------------


@pytest.fixture
def results(testdata: Path, tmp_path: Path) -> tuple[pd.DataFrame, list[Any]]:
    """aggregate_df over one answer, one HTTP error, one expired line and one missing request;
    and the lines it read, decoded."""
    requests = pb.build_requests(pb.load_portfolio(testdata / "portfolio.csv")).iloc[:4]
    ids = requests.index.tolist()
    lines = [
        ok_line(ids[0], pt=300, ct=80, cached=100),
        http_error_line(ids[1], 429, "rate_limit_exceeded"),
        null_line(ids[2], "batch_expired"),
    ]
    out = write_jsonl(tmp_path / "out.jsonl", lines)
    frame = pb.aggregate_df(None, requests, output_files=[out])
    return frame, [LINE_DECODER.decode(orjson.dumps(line)) for line in lines]


def test_row_fields_are_the_results_columns_in_their_order(
    results: tuple[pd.DataFrame, list[Any]],
) -> None:
    frame, _ = results
    assert contract.ResultRow._fields == (*contract.ROW_COLUMNS, "answer")
    columns = list(frame.columns)
    assert [c for c in columns if c in contract.ROW_COLUMNS] == list(contract.ROW_COLUMNS)
    assert columns[-len(contract.USAGE_COLUMNS) :] == list(contract.USAGE_COLUMNS)
    start = columns.index("status")
    assert columns[start : start + len(contract.ANSWER_COLUMNS)] == list(contract.ANSWER_COLUMNS)
    assert set(contract.RESULT_COLUMNS) - set(columns) == {"attempt"}  # merge_results adds it


def test_each_row_field_lands_in_its_column(results: tuple[pd.DataFrame, list[Any]]) -> None:
    frame, lines = results
    validator = validator_for(frame.attrs["schema"])
    assert validator is not None
    for line in lines:
        row = row_of(line, validator.decode, validator.empty)
        assert isinstance(row, contract.ResultRow)
        got = frame.loc[line.custom_id]
        for name in contract.ROW_COLUMNS:
            want = getattr(row, name)
            if name == "model" and want is None:
                assert got[name] is None or pd.isna(got[name])
            elif want is None:
                assert pd.isna(got[name]), name
            else:
                assert got[name] == want, name
    ok, http, expired = (row_of(x, validator.decode, validator.empty) for x in lines)
    assert (ok.status, ok.prompt_tokens, ok.cached_tokens) == ("succeeded", 300, 100)
    assert ok.answer is not validator.empty
    assert (http.status, http.http_status, http.error_code) == (
        "failed",
        429,
        "rate_limit_exceeded",
    )
    assert (expired.status, expired.error_code) == ("expired", "batch_expired")
    assert frame["status"].tolist()[3] == "missing"
    assert set(frame["status"]) <= set(contract.RESULT_STATUSES)


def test_a_row_without_an_answer_has_no_usage() -> None:
    row = failed_row("missing", "result_file_gone", "gone")
    assert row.status == "missing" and row.error_code == "result_file_gone"
    assert all(getattr(row, c) is None for c in (*contract.TOKEN_COLUMNS, "model", "answer"))


def test_to_jsonl_writes_the_manifest_columns_and_submit_needs_a_subset(
    testdata: Path, tmp_path: Path
) -> None:
    requests = pb.build_requests(pb.load_portfolio(testdata / "portfolio.csv")).iloc[:3]
    manifest = pb.to_jsonl(requests, tmp_path)
    assert list(manifest.columns) == list(contract.MANIFEST_COLUMNS)
    assert set(contract.MANIFEST_REQUIRED) < set(contract.MANIFEST_COLUMNS)
    assert set(contract.JOBS_TABLE_COLUMNS) <= set(contract.JOBS_COLUMNS)
    assert set(contract.REQUEST_COLUMNS) <= set(requests.columns)


# -- colours --------------------------------------------------------------------------------------


def test_every_status_and_level_has_a_hex_colour() -> None:
    for status in (*contract.JOB_STATUSES, *contract.RESULT_STATUSES):
        assert HEX.match(contract.STATUS_COLORS[status]), status
    assert len({contract.STATUS_COLORS[s] for s in contract.TERMINAL}) == len(contract.TERMINAL)
    assert contract.STATUS_COLORS["finalizing"] != contract.STATUS_COLORS["completed"]
    for colour in (
        *contract.LEVEL_COLORS.values(),
        contract.OTHER_LEVEL_COLOR,
        contract.OTHER_STATUS_COLOR,
        contract.UNSCORED_COLOR,
    ):
        assert HEX.match(colour)


def test_charts_widgets_cli_and_report_take_the_contract_colours() -> None:
    from portfolio_batch import _report, _widgets, charts
    from portfolio_batch.cli import _render

    assert charts.STATUS_COLORS is contract.STATUS_COLORS
    assert charts.LEVEL_COLORS is contract.LEVEL_COLORS
    for status, colour in contract.STATUS_COLORS.items():
        assert _widgets.STATUS_STYLES[status][0] == colour
        assert _render._STATUS_STYLE[status].split()[-1] == colour
    for level, colour in contract.LEVEL_COLORS.items():
        assert _render._LEVEL_STYLE[level].split()[-1] == colour
    css = _report._environment().globals["css"]
    for level in ("low", "medium", "high"):
        assert f"--{level}:{contract.LEVEL_COLORS[level]}" in css
    assert f"--none:{contract.UNSCORED_COLOR}" in css
    assert "#2e7d32" not in css.split("}", 1)[1]  # no second copy of a level colour in the file


# -- defined once ---------------------------------------------------------------------------------

_COLOUR_WORDS = {"red", "green", "yellow", "cyan", "magenta", "blue", "dim", "white"}


def _literal(node: ast.expr) -> Any:
    """The value of a literal, or of frozenset/set/tuple/list of one; None otherwise."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("frozenset", "set", "tuple", "list")
        and len(node.args) == 1
    ):
        node = node.args[0]
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return None


def _is_colour(value: Any) -> bool:
    first = value[0] if isinstance(value, tuple) and value else value
    return isinstance(first, str) and (
        bool(HEX.match(first.lower())) or first.split()[-1:] in [[w] for w in _COLOUR_WORDS]
    )


def copies_of_the_contract(source: str) -> list[str]:
    """Module-level names in ``source`` bound to a copy of a contract status set, column list or
    colour table."""
    sets = {
        name: frozenset(value)
        for name, value in vars(contract).items()
        if name.isupper() and isinstance(value, frozenset | tuple) and len(value) >= 3
    }
    keys = set(contract.STATUS_COLORS) | set(contract.LEVEL_COLORS)
    found = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, _literal(node.value)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], _literal(node.value)
        else:
            continue
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        if isinstance(value, dict) and len(value) >= 3 and set(value) <= keys:
            if any(_is_colour(v) for v in value.values()):
                found += [f"{n} (a colour table)" for n in names]
        elif (
            isinstance(value, list | tuple | set | frozenset)
            and len(value) >= 3
            and all(isinstance(v, str) for v in value)
        ):
            same = [k for k, members in sets.items() if frozenset(value) == members]
            found += [f"{n} (= _contract.{same[0]})" for n in names if same]
    return found


def test_the_copy_finder_finds_copies() -> None:
    assert copies_of_the_contract('T = frozenset({"completed", "failed", "expired", "cancelled"})')
    assert copies_of_the_contract('FINISHED = ["cancelled", "completed", "failed", "expired"]')
    assert copies_of_the_contract(
        'S = {"failed": "bold red", "expired": "magenta", "low": "green"}'
    )
    assert copies_of_the_contract('S = {"failed": ("#c62828", "danger"), "a": 1, "b": 2}') == []
    assert copies_of_the_contract('P = {"validating": 1, "in_progress": 2, "completed": 4}') == []


@pytest.mark.parametrize(
    "path",
    [p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "_contract.py"],
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_no_module_writes_its_own_copy(path: Path) -> None:
    assert copies_of_the_contract(path.read_text(encoding="utf-8")) == []


def test_the_contract_imports_nothing_from_the_package() -> None:
    tree = ast.parse((PACKAGE / "_contract.py").read_text(encoding="utf-8"))
    imported = [
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    ]
    assert not [m for m in imported if m and m.startswith("portfolio_batch")]
