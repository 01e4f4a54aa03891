"""check_answers and the key echo: answers that cannot be trusted are flagged, and an answer for
another position than its request's is not counted as succeeded."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch._quality import FLAG_COLUMNS, headline
from portfolio_batch._requests import DEFAULT_SYSTEM_PROMPT
from portfolio_batch.cli._render import flags_text


@pytest.fixture
def requests(testdata: Path) -> pd.DataFrame:
    return pb.build_requests(pb.load_portfolio(testdata / "portfolio.csv"))


@pytest.fixture
def rules_results(requests: pd.DataFrame, openai_client: Any) -> pd.DataFrame:
    """The 40 positions of testdata/portfolio.csv answered by the local rules engine."""
    return pb.run_sync(requests, client=openai_client, progress=False)


def degenerate(results: pd.DataFrame) -> pd.DataFrame:
    """What a 135M model gave: the same score and level for every position, and the schema's
    own words as the rationale."""
    return results.assign(risk_score=0, risk_level="low", rationale="One or two sentences")


def checks(flags: pd.DataFrame) -> set[tuple[str, Any, str]]:
    return {(r.check, r.field, r.severity) for r in flags.itertuples()}


def line(cid: str, answer: Any, *, finish: str = "stop", refusal: str | None = None) -> bytes:
    content = None if answer is None else orjson.dumps(answer).decode()
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 300, "completion_tokens": 60, "total_tokens": 360},
    }
    return orjson.dumps(
        {"id": "b", "custom_id": cid, "response": {"status_code": 200, "body": body}}
    )


def answer(key: str, score: int = 50) -> dict[str, Any]:
    level = "low" if score < 34 else "medium" if score <= 66 else "high"
    return {
        "position_key": key,
        "risk_score": score,
        "risk_level": level,
        "drivers": [f"{key} weight"],
        "rationale": f"{key} is a {level}-risk holding at {score}/100.",
    }


def aggregate(tmp_path: Path, requests: pd.DataFrame, lines: list[bytes]) -> pd.DataFrame:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return pb.aggregate_df(None, requests, output_files=[path])


# ---------------------------------------------------------------- the rules engine passes


def test_rules_engine_output_passes_every_check(rules_results: pd.DataFrame) -> None:
    assert (rules_results["status"] == "succeeded").all()
    # every answer echoes its own key
    assert rules_results["position_key"].tolist() == rules_results["ticker"].tolist()
    # in the system prompt's bands, to the point (34 is medium, 66 too)
    assert rules_results["risk_level"].tolist() == [level(s) for s in rules_results["risk_score"]]
    flags = pb.check_answers(rules_results)
    assert list(flags.columns) == list(FLAG_COLUMNS)
    assert flags.empty, flags.to_string()
    assert flags.attrs == {"checked": 40, "trusted": 40}
    summary = pb.summarize(rules_results)
    assert summary.trusted == 40 and summary.headline is None


def test_forty_identical_scores_with_schema_echo_rationales_are_severe(
    rules_results: pd.DataFrame, tmp_path: Path
) -> None:
    bad = degenerate(rules_results)
    flags = pb.check_answers(bad)
    assert {
        ("same_value", "risk_score", "severe"),
        ("same_value", "rationale", "severe"),
        ("echoed_prompt", "rationale", "severe"),
        ("same_value", "risk_level", "warning"),  # a homogeneous portfolio can be all "low"
    } == checks(flags)
    score = flags.set_index(["check", "field"]).loc[("same_value", "risk_score")]
    assert (score["count"], score["share"]) == (40, 1.0)
    assert score["message"] == "40 of 40 answers give risk_score = 0"
    assert score["examples"] == ["AAPL: 0", "MSFT: 0", "NVDA: 0"]  # named by the key
    echo = flags.set_index(["check", "field"]).loc[("echoed_prompt", "rationale")]
    assert "'One or two sentences'" in echo["message"]
    assert flags.attrs["trusted"] == 0
    assert headline(flags).startswith("The answers look degenerate: 40 of 40 answers give")

    summary = pb.summarize(bad)
    assert summary.trusted == 0 and summary.flags is not None and len(summary.flags) == 4
    assert "The answers look degenerate" in str(summary)
    assert "Answer checks" in summary._repr_html_()


def test_degenerate_answers_are_said_at_the_top_of_the_report(
    rules_results: pd.DataFrame, tmp_path: Path
) -> None:
    doc = pb.report(degenerate(rules_results), path=tmp_path / "bad.html", charts=False)
    text = doc.read_text()
    top = re.search(r'<p class="degenerate"[^>]*>(.*?)</p>', text)
    assert top and html.unescape(top.group(1)).startswith("The answers look degenerate: 40 of 40")
    assert text.index('class="degenerate"') < text.index("<h2>Summary</h2>")
    # the full list is in the appendix (the report's heading levels are the report's business)
    assert re.search(r"<h\d[^>]*>Answer checks \(4\)</h\d>", text) and 'class="flags"' in text

    clean = pb.report(rules_results, path=tmp_path / "ok.html", charts=False).read_text()
    assert 'class="degenerate"' not in clean
    assert re.search(
        r"<h\d[^>]*>Answer checks \(0\)</h\d>\s*<p>No answer flagged: 40 answers checked", clean
    )


def test_cli_lines_one_per_flag(rules_results: pd.DataFrame) -> None:
    from rich.console import Console

    console = Console(width=2000, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(flags_text(pb.check_answers(degenerate(rules_results))))
    printed = console.export_text().splitlines()
    assert printed[0].startswith("The answers look degenerate: 40 of 40 answers give risk_score")
    assert printed[1].startswith("  severe same_value risk_score: 40 of 40 answers give")
    assert printed[1].endswith("(e.g. AAPL: 0; MSFT: 0; NVDA: 0)")
    assert [p.split()[:2] for p in printed[1:]] == [
        ["severe", "same_value"],
        ["severe", "same_value"],
        ["severe", "echoed_prompt"],
        ["warning", "same_value"],
    ]
    console.print(flags_text(pb.check_answers(rules_results)))
    assert console.export_text().strip() == "Answer checks: no flag on 40 answers."


# ---------------------------------------------------------------- each check on a small frame


def level(score: int) -> str:
    return "low" if score < 34 else "medium" if score <= 66 else "high"


def frame(**columns: Any) -> pd.DataFrame:
    """Six (or as many as the lists given) varied, consistent answers, with what aggregate_df
    puts in attrs; ``columns`` replace some."""
    n = max((len(v) for v in columns.values() if isinstance(v, list)), default=6)
    scores = columns.get("risk_score", [(10 + 15 * i) % 100 for i in range(n)])
    base: dict[str, Any] = {
        "ticker": [f"T{i}" for i in range(n)],
        "status": ["succeeded"] * n,
        "error_code": [None] * n,
        "finish_reason": ["stop"] * n,
        "position_key": [f"T{i}" for i in range(n)],
        "risk_score": scores,
        "risk_level": [level(s) for s in scores],
        "drivers": [[f"driver {i}"] for i in range(n)],
        "rationale": [f"Position {i} is fine." for i in range(n)],
    }
    base.update(columns)
    out = pd.DataFrame(base)
    out.attrs.update(key="ticker", schema=pb.RISK_SCHEMA, system_prompt=DEFAULT_SYSTEM_PROMPT)
    return out


def test_a_varied_small_frame_passes() -> None:
    assert pb.check_answers(frame()).empty


def test_one_value_needs_five_rows_and_ninety_percent() -> None:
    same = ("same_value", "risk_score", "severe")
    assert same not in checks(pb.check_answers(frame(risk_score=[40] * 4)))
    assert same in checks(pb.check_answers(frame(risk_score=[40] * 5)))
    assert same in checks(pb.check_answers(frame(risk_score=[40] * 9 + [41])))
    assert same not in checks(pb.check_answers(frame(risk_score=[40] * 8 + [41, 42])))
    assert same in checks(pb.check_answers(frame(risk_score=[40] * 8 + [41, 42]), same_share=0.8))
    # every position "low" with varied scores: worth a look, but each answer is still trusted
    all_low = pb.check_answers(frame(risk_score=[10, 12, 14, 16, 18, 20]))
    assert checks(all_low) == {("same_value", "risk_level", "warning")}
    assert all_low.attrs["trusted"] == 6 and headline(all_low) is None


def test_echo_of_the_prompt_or_a_description_in_any_text_field() -> None:
    flags = pb.check_answers(
        frame(
            rationale=[
                "Position 0 is fine.",
                "rationale",  # its own field name
                "ONE-or-two  sentences!",  # the prompt, whatever the case and punctuation
                *[f"ok {i}" for i in range(5)],
            ],
            drivers=[["at most 3, short"], *[[f"driver {i}"] for i in range(7)]],
        )
    )
    assert {
        ("echoed_prompt", "rationale", "warning"),
        ("echoed_prompt", "drivers", "warning"),  # three words of the prompt
    } == checks(flags)
    assert flags.set_index("field").loc["rationale", "examples"] == [
        "T1: 'rationale'",
        "T2: 'ONE-or-two  sentences!'",
    ]
    # two words of the prompt are a fine driver ("beta" and "sector" are in it too)
    same_drivers = pb.check_answers(frame(drivers=[["sector notes", "beta"]] * 6))
    assert checks(same_drivers) == {("same_value", "drivers", "severe")}
    assert same_drivers["examples"].iloc[0][0] == "T0: ['sector notes', 'beta']"
    # a whole description counts however short; the key echo is key_mismatch's to judge
    short = {
        "type": "object",
        "properties": {"why": {"type": "string", "description": "Short reason"}},
    }
    answers = pd.DataFrame({"status": ["succeeded"] * 6, "why": ["short reason!", *"abcde"]})
    assert checks(pb.check_answers(answers, schema=short)) == {("echoed_prompt", "why", "warning")}
    described = pb.check_answers(
        frame(position_key=["The first field's value, copied exactly"] * 6)
    )
    assert ("key_mismatch", "position_key", "severe") in checks(described)


def test_scores_outside_the_range_or_against_their_level() -> None:
    flags = pb.check_answers(
        frame(
            risk_score=[150, 20, 70, 90, 50, 80],
            risk_level=["high", "high", "medium", "medium", "medium", "high"],
        )
    )
    by = flags.set_index("check")
    assert by.loc["out_of_range", "examples"] == ["T0: 150"]
    assert (
        by.loc["out_of_range", "message"]
        == "1 of 6 answers have risk_score outside the schema's range 0.0..100.0"
    )
    # high at 20 and medium at 90 contradict the prompt's bands; medium at 70 is within 5 points
    assert by.loc["level_mismatch", "count"] == 2
    assert by.loc["level_mismatch", "examples"] == [
        "T1: risk_score 20, risk_level high",
        "T3: risk_score 90, risk_level medium",
    ]
    assert "(low 0-34, medium 34-66, high 66-100)" in by.loc["level_mismatch", "message"]


def test_level_bands_come_from_the_prompt() -> None:
    results = frame(
        risk_score=[10, 30, 50, 60, 85, 95], risk_level=["low"] * 2 + ["medium"] * 2 + ["high"] * 2
    )
    assert pb.check_answers(results).empty
    strict = "risk_level: low below 20, medium 20-40, high above 40."
    flags = pb.check_answers(results, prompt=strict, examples=5)
    assert flags.set_index("check").loc["level_mismatch", "examples"] == [
        "T1: risk_score 30, risk_level low",
        "T2: risk_score 50, risk_level medium",
        "T3: risk_score 60, risk_level medium",
    ]
    assert "(low 0-20, medium 20-40, high 40-100)" in flags["message"].iloc[0]


def test_refusals_and_cut_answers() -> None:
    flags = pb.check_answers(
        frame(
            status=["invalid_output", "succeeded", "invalid_output", *["succeeded"] * 3],
            error_code=["refusal", None, "invalid_json", None, None, None],
            finish_reason=["stop", "stop", "length", "stop", "stop", "stop"],
            rationale=["x", "I'm sorry, but I can't assess this.", *[f"ok {i}" for i in range(4)]],
        )
    )
    by = flags.set_index("check")
    assert by.loc["refusal", "count"] == 2 and by.loc["refusal", "severity"] == "warning"
    assert by.loc["truncated", "examples"] == ["T2: invalid_output"]
    assert "retry_failed(results, requests, max_tokens=800)" in by.loc["truncated", "advice"]
    assert (
        pb.check_answers(frame(finish_reason=["length"] * 6))
        .set_index("check")
        .loc["truncated", "severity"]
        == "severe"
    )


def test_schema_found_without_attrs_and_a_custom_schema() -> None:
    bare = frame(risk_score=[0] * 6, risk_level=["low"] * 6)
    bare.attrs = {}  # e.g. read back from results.csv: the default schema is assumed
    flags = pb.check_answers(bare)
    assert ("same_value", "risk_score", "severe") in checks(flags)
    assert flags["examples"].iloc[0][0] == "T0: 0"  # rows named by the default key, ticker
    custom = pd.DataFrame({"status": ["succeeded"] * 6, "verdict": ["buy"] * 6})
    schema = {"type": "object", "properties": {"verdict": {"type": "string"}}}
    assert pb.check_answers(custom).empty  # no schema known: no field to judge
    assert ("same_value", "verdict", "severe") in checks(pb.check_answers(custom, schema=schema))


def test_bad_options_are_refused() -> None:
    with pytest.raises(pb.InputError, match="min_rows=0"):
        pb.check_answers(frame(), min_rows=0)
    with pytest.raises(pb.InputError, match="results lacks column"):
        pb.check_answers(pd.DataFrame({"x": [1]}))


# ---------------------------------------------------------------- the key echo in aggregation


def test_an_answer_for_another_key_is_not_succeeded(tmp_path: Path, requests: pd.DataFrame) -> None:
    req = requests.iloc[:4]
    ids, keys = req.index.tolist(), req["ticker"].tolist()
    res = aggregate(
        tmp_path,
        req,
        [
            line(ids[0], answer(keys[1])),  # two answers swapped: the provider mixed them up
            line(ids[1], answer(keys[0])),
            line(ids[2], answer(f"  {keys[2].lower()} ")),  # case and spaces: the same key
            line(ids[3], answer(keys[3])),
        ],
    )
    assert res["status"].tolist() == ["invalid_output", "invalid_output", "succeeded", "succeeded"]
    assert res["error_code"].tolist()[:2] == ["key_mismatch", "key_mismatch"]
    assert (
        res["error_message"]
        .iloc[0]
        .startswith(
            f"the answer's position_key is {keys[1]!r} but this request's ticker is {keys[0]!r}"
        )
    )
    # like any invalid_output row: no answer fields, the raw content kept
    assert pd.isna(res["risk_score"].iloc[0]) and res["position_key"].iloc[0] is None
    assert keys[1] in res["content"].iloc[0]
    assert res["risk_score"].iloc[3] == 50
    assert sorted(pb.retry_failed(res, req).index) == sorted(ids[:2])
    flags = pb.check_answers(res)
    assert checks(flags) == {("key_mismatch", "position_key", "severe")}
    assert flags["examples"].iloc[0] == [
        f"{keys[0]}: answered {keys[1]!r}",
        f"{keys[1]}: answered {keys[0]!r}",
    ]
    assert flags["count"].iloc[0] == 2 and flags.attrs["trusted"] == 2
    assert pb.summarize(res).successes == 2


def test_a_key_that_is_exactly_another_requests_is_a_mismatch_even_in_another_case(
    tmp_path: Path,
) -> None:
    portfolio = pd.DataFrame({"ticker": ["abc", "ABC", "XYZ"], "weight": [0.3, 0.3, 0.4]})
    req = pb.build_requests(portfolio)
    ids = req.index.tolist()
    res = aggregate(
        tmp_path,
        req,
        [line(ids[0], answer("ABC")), line(ids[1], answer("abc")), line(ids[2], answer("xyz"))],
    )
    assert res["status"].tolist() == ["invalid_output", "invalid_output", "succeeded"]


def test_a_schema_without_the_echo_is_not_compared(tmp_path: Path, testdata: Path) -> None:
    schema = {
        "type": "object",
        "properties": {"verdict": {"type": "string", "enum": ["buy", "sell"]}},
        "required": ["verdict"],
        "additionalProperties": False,
    }
    req = pb.build_requests(pb.load_portfolio(testdata / "portfolio.csv"), schema=schema).iloc[:2]
    res = aggregate(tmp_path, req, [line(cid, {"verdict": "buy"}) for cid in req.index])
    assert (res["status"] == "succeeded").all() and "position_key" not in res.columns


def test_mixed_schemas_compare_only_the_rows_asked_for_the_echo(
    tmp_path: Path, requests: pd.DataFrame
) -> None:
    other = {
        "type": "object",
        "properties": {"verdict": {"type": "string", "enum": ["buy", "sell"]}},
        "required": ["verdict"],
        "additionalProperties": False,
    }
    mine = pb.build_requests(requests.iloc[2:4][["ticker", "weight"]], schema=other)
    req = pd.concat([requests.iloc[:2], mine])
    req.attrs = {"key": "ticker"}  # no one schema: each body carries its own
    ids, keys = req.index.tolist(), req["ticker"].tolist()
    res = aggregate(
        tmp_path,
        req,
        [
            line(ids[0], answer(keys[0])),
            line(ids[1], answer(keys[0])),
            *(line(cid, {"verdict": "buy"}) for cid in ids[2:]),
        ],
    )
    assert res["status"].tolist() == ["succeeded", "invalid_output", "succeeded", "succeeded"]


def test_unchecked_echoes_in_a_hand_built_frame_are_flagged() -> None:
    flags = pb.check_answers(frame(position_key=["T1", "T0", "T2", "T3", "t4 ", "T5"]))
    row = flags.set_index("check").loc["key_mismatch"]
    assert row["count"] == 2 and row["examples"] == ["T0: answered 'T1'", "T1: answered 'T0'"]
    assert row["advice"].startswith("2 of them are still marked succeeded")


def test_a_number_key_matches_as_the_prompt_wrote_it(tmp_path: Path) -> None:
    req = pb.build_requests(pd.DataFrame({"id": [7, 8], "weight": [0.5, 0.5]}), key="id")
    assert req["body"].iloc[0]["messages"][1]["content"].endswith('{"id":7,"weight":0.5}')
    res = aggregate(
        tmp_path, req, [line(req.index[0], answer("7")), line(req.index[1], answer("7"))]
    )
    assert res["status"].tolist() == ["succeeded", "invalid_output"]
