"""build_requests: the requests frame's shape, its bodies, stable custom_ids, bad input."""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from pydantic import BaseModel

import portfolio_batch as pb
from portfolio_batch import RISK_SCHEMA, InputError, build_requests, load_portfolio
from portfolio_batch._requests import DEFAULT_SYSTEM_PROMPT, custom_id_for
from tests import readme


@pytest.fixture
def portfolio(testdata: Path) -> pd.DataFrame:
    return load_portfolio(testdata / "portfolio.csv")


def test_frame_shape_and_attrs(portfolio: pd.DataFrame) -> None:
    requests = build_requests(portfolio)
    assert list(requests.columns) == ["custom_id", "method", "url", "body", *portfolio.columns]
    assert requests.index.name == "custom_id"
    assert (requests.index == requests["custom_id"]).all()
    assert len(requests) == len(portfolio)
    assert set(requests["method"]) == {"POST"}
    assert set(requests["url"]) == {"/v1/chat/completions"}
    assert requests["ticker"].tolist() == portfolio["ticker"].tolist()
    attrs = requests.attrs
    assert attrs["model"] == "gpt-4o-mini"
    assert attrs["endpoint"] == "/v1/chat/completions"
    assert attrs["key"] == "ticker"
    assert re.fullmatch(r"[0-9a-f]{8}", attrs["prompt_version"])
    assert attrs["schema"] == RISK_SCHEMA


def test_body_is_a_strict_structured_output_chat_request(portfolio: pd.DataFrame) -> None:
    body = build_requests(portfolio, max_tokens=300).body.iloc[0]
    assert list(body) == ["model", "messages", "max_tokens", "response_format"]
    assert body["model"] == "gpt-4o-mini"
    assert body["max_tokens"] == 300
    system, user = body["messages"]
    assert system == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    assert user["role"] == "user"
    rf = body["response_format"]
    assert rf["type"] == "json_schema"
    assert rf["json_schema"]["name"] == "position_risk"
    assert rf["json_schema"]["strict"] is True
    schema = rf["json_schema"]["schema"]
    # the key echo comes first: the model copies it before it writes anything else
    assert schema["required"] == [
        "position_key",
        "risk_score",
        "risk_level",
        "drivers",
        "rationale",
    ]
    assert next(iter(schema["properties"])) == "position_key"
    assert schema["properties"]["position_key"]["type"] == "string"
    assert "position_key: the first field's value, copied exactly" in system["content"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["risk_score"] == {"type": "integer", "minimum": 0, "maximum": 100}
    assert schema["properties"]["risk_level"]["enum"] == ["low", "medium", "high"]
    assert schema["properties"]["drivers"]["maxItems"] == 3


def test_last_line_is_the_rows_fields_as_compact_json(portfolio: pd.DataFrame) -> None:
    requests = build_requests(portfolio)
    ma = requests.set_index("ticker").body["MA"]["messages"][1]["content"]  # MA has no notes
    last = ma.splitlines()[-1]
    assert last == (
        '{"ticker":"MA","name":"Mastercard Inc. Class A","sector":"Financials",'
        '"weight":0.022,"beta":1.05,"volatility":0.21}'
    )
    assert list(orjson.loads(last)) == ["ticker", "name", "sector", "weight", "beta", "volatility"]
    nvda = requests.set_index("ticker").body["NVDA"]["messages"][1]["content"].splitlines()[-1]
    assert orjson.loads(nvda)["notes"].startswith("Data-center GPU demand")


def test_key_first_and_all_types_of_values() -> None:
    df = pd.DataFrame(
        {
            "weight": [0.5, np.nan],
            "id": [7, 8],
            "flag": [True, False],
            "when": pd.to_datetime(["2024-01-02", None]),
            "n": pd.array([1, None], dtype="Int64"),
            "mixed": [np.int64(3), "text\nwith newline"],
        }
    )
    requests = build_requests(df, key="id")
    assert list(requests.columns)[4:] == ["id", "weight", "flag", "when", "n", "mixed"]
    lines = [b["messages"][1]["content"].splitlines()[-1] for b in requests.body]
    assert (
        lines[0] == '{"id":7,"weight":0.5,"flag":true,"when":"2024-01-02T00:00:00","n":1,"mixed":3}'
    )
    assert lines[1] == '{"id":8,"flag":false,"mixed":"text\\nwith newline"}'
    assert requests.index.tolist()[0].startswith("risk-7-")


def test_custom_id_is_stable_whatever_the_row_order(portfolio: pd.DataFrame) -> None:
    ids = build_requests(portfolio)["custom_id"]
    shuffled = portfolio.sample(frac=1, random_state=3)
    ids_shuffled = build_requests(shuffled)["custom_id"]
    by_key = dict(zip(portfolio["ticker"], ids, strict=True))
    by_key_shuffled = dict(zip(shuffled["ticker"], ids_shuffled, strict=True))
    assert by_key == by_key_shuffled
    assert re.fullmatch(r"risk-NVDA-[0-9a-f]{8}", by_key["NVDA"])
    subset = build_requests(portfolio.iloc[[5, 2]])
    assert subset["custom_id"].tolist() == [ids.iloc[5], ids.iloc[2]]


def test_prompt_version_follows_prompt_schema_and_model(portfolio: pd.DataFrame) -> None:
    base = build_requests(portfolio).attrs["prompt_version"]
    assert build_requests(portfolio, max_tokens=50).attrs["prompt_version"] == base
    assert build_requests(portfolio, model="gpt-4.1-mini").attrs["prompt_version"] != base
    assert build_requests(portfolio, prompt="Be brief.").attrs["prompt_version"] != base
    schema = copy.deepcopy(RISK_SCHEMA)
    schema["properties"]["rationale"]["description"] = (
        "one sentence"  # a new field changes the hash
    )
    assert build_requests(portfolio, schema=schema).attrs["prompt_version"] != base


PORTABLE_ID = r"[A-Za-z0-9_-]{1,64}"
# The keys and their near neighbours: one punctuation mark apart, a non-ASCII letter,
# keys that differ only past the characters an id can show, keys that look like hashed ids.
AWKWARD_KEYS = [
    "BRK.B", "BRK/B", "BRK-B", "BRK_B", "BRKB", "BRK B", "BRK%2FB", "BRK%252FB", "ŽIL", "ZIL",
    "Société", "中国平安", "x~y", "A\nB", "K" * 100, "K" * 99 + "L", "K" * 40 + "x" * 60,
    "K" * 40 + "y" * 60, "K" * 50, "K" * 51, "BRK_B-0907abf5bc1da7c7", "risk-AAPL",
]  # fmt: skip


def test_every_id_is_portable_unique_and_joins_back_by_key(tmp_path: Path) -> None:
    df = pd.DataFrame({"ticker": ["AAPL", *AWKWARD_KEYS]})
    df["weight"] = 1 / len(df)
    requests = build_requests(df)
    version = requests.attrs["prompt_version"]
    ids = requests["custom_id"].tolist()
    assert all(re.fullmatch(PORTABLE_ID, cid) for cid in ids), ids
    assert len(set(ids)) == len(ids)
    assert {cid.rsplit("-", 1)[-1] for cid in ids} == {version}  # the run hash stays last
    # readable where the key already fits; hashed (a 4th part) where it does not
    assert ids[0] == f"risk-AAPL-{version}"
    assert ids[1] == f"risk-BRK_B-{hashlib.sha256(b'BRK.B').hexdigest()[:16]}-{version}"
    assert ids[4] == f"risk-BRK_B-{version}" and ids[5] == f"risk-BRKB-{version}"
    assert ids[9].startswith("risk-ZIL-") and ids[10] == f"risk-ZIL-{version}"
    assert ids[df.ticker.tolist().index("K" * 50)] == f"risk-{'K' * 50}-{version}"  # fits: kept
    assert ids[df.ticker.tolist().index("K" * 51)].count("-") == 3  # one too long: hashed
    # the same frame gives the same ids, whatever the row order or the string storage
    again = build_requests(df.iloc[::-1].astype({"ticker": "string[pyarrow]"}))
    assert again["custom_id"].tolist() == ids[::-1]
    # results join back by key: each result row carries its own request's key
    results = pb.aggregate_df(None, requests, output_files=[_answers_file(requests, tmp_path)])
    assert results["ticker"].tolist() == df["ticker"].tolist()
    assert (results["status"] == "succeeded").all()
    assert results["position_key"].tolist() == df["ticker"].tolist()


def _answers_file(requests: pd.DataFrame, where: Path) -> Path:
    """An OpenAI batch output file answering every request (in reverse order), echoing its key."""
    path = where / "output.jsonl"
    lines = []
    pairs = zip(requests["custom_id"][::-1], requests["ticker"][::-1], strict=True)
    for n, (cid, key) in enumerate(pairs):
        answer = {"position_key": key, "risk_score": 10, "risk_level": "low", "drivers": [],
                  "rationale": "ok"}  # fmt: skip
        body = {
            "id": f"chatcmpl-{n}", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": orjson.dumps(answer).decode()}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
        }  # fmt: skip
        lines.append({"id": f"batch_req_{n}", "custom_id": cid, "error": None,
                      "response": {"status_code": 200, "request_id": f"req_{n}", "body": body}})  # fmt: skip
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def test_custom_id_for_hashes_the_exact_key_and_checks_its_parts() -> None:
    assert custom_id_for("BRK/B", "0" * 8, prefix="x") == (
        "x-BRK_B-" + hashlib.sha256(b"BRK/B").hexdigest()[:16] + "-00000000"
    )
    assert custom_id_for("NVDA", "0" * 8, prefix="x") == "x-NVDA-00000000"
    with pytest.raises(InputError, match="letters, digits and '_'"):
        custom_id_for("NVDA", "0" * 8, prefix="a-b")
    with pytest.raises(InputError, match=r"id_prefix='risk\.v2'.*letters, digits and '_'"):
        build_requests(pd.DataFrame({"ticker": ["A"]}), id_prefix="risk.v2")


def test_old_style_ids_still_aggregate_with_their_requests_frame(tmp_path: Path) -> None:
    """A run made before portable ids (``risk-BRK.B-...``, ``risk-BRK%2FB-...``) re-aggregated:
    its stored requests frame and its results files carry the old ids, and they join as before."""
    requests = build_requests(pd.DataFrame({"ticker": ["BRK.B", "BRK/B", "AAPL"], "weight": 0.3}))
    old = [f"risk-BRK.B-{requests.attrs['prompt_version']}", "risk-BRK%2FB-3eb420ac",
           f"risk-AAPL-{requests.attrs['prompt_version']}"]  # fmt: skip
    requests.index = pd.Index(old, name="custom_id")
    requests["custom_id"] = old
    results = pb.aggregate_df(None, requests, output_files=[_answers_file(requests, tmp_path)])
    assert results.index.tolist() == old
    assert results["ticker"].tolist() == ["BRK.B", "BRK/B", "AAPL"]
    assert (results["status"] == "succeeded").all()
    assert results["position_key"].tolist() == ["BRK.B", "BRK/B", "AAPL"]


def test_duplicate_keys_name_both_rows() -> None:
    df = pd.DataFrame({"ticker": ["A", "B", "A"], "weight": [0.3, 0.3, 0.4]}, index=[10, 11, 12])
    with pytest.raises(
        InputError, match=r"row 0 \(index 10\) and row 2 \(index 12\).*same key 'A'"
    ):
        build_requests(df)


def test_empty_key_names_the_row() -> None:
    df = pd.DataFrame({"ticker": ["A", None], "weight": [0.5, 0.5]})
    with pytest.raises(InputError, match=r"row 1 \(index 1\): the key column 'ticker' is empty"):
        build_requests(df)


def test_caller_frame_is_not_mutated(portfolio: pd.DataFrame) -> None:
    before = portfolio.copy(deep=True)
    requests = build_requests(portfolio)
    requests.loc[requests.index[0], "weight"] = 99.0
    pd.testing.assert_frame_equal(portfolio, before)
    assert list(portfolio.columns) == list(before.columns)


def test_azure_endpoint_and_deployment_name(portfolio: pd.DataFrame) -> None:
    requests = build_requests(portfolio, model="my-gpt4o-mini-batch", endpoint="/chat/completions")
    assert set(requests["url"]) == {"/chat/completions"}
    assert requests.body.iloc[0]["model"] == "my-gpt4o-mini-batch"
    assert requests.attrs["endpoint"] == "/chat/completions"


def test_bad_options_are_named(portfolio: pd.DataFrame) -> None:
    with pytest.raises(InputError, match=r"endpoint='/v1/embeddings' is not supported"):
        build_requests(portfolio, endpoint="/v1/embeddings")
    with pytest.raises(InputError, match="max_tokens=0 must be a positive integer"):
        build_requests(portfolio, max_tokens=0)
    with pytest.raises(InputError, match=r"key column 'isin' is missing.*key="):
        build_requests(portfolio, key="isin")
    with pytest.raises(InputError, match=r"It is the index: pass df.reset_index\(\)"):
        build_requests(portfolio.set_index("ticker"))
    with pytest.raises(InputError, match=r"\['url'\] clash.*rename"):
        build_requests(portfolio.assign(url="x"))
    # A portfolio that already carries a risk_score or a status would collide with the results
    # only after the batch is paid for: refused here, naming the column and a rename.
    with pytest.raises(InputError, match=r"\['risk_score'\] have the name of a results column"):
        build_requests(portfolio.assign(risk_score=50))
    # nor an input column named like the key echo
    with pytest.raises(InputError, match=r"\['position_key'\] have the name of a results column"):
        build_requests(portfolio.assign(position_key="x"))
    with pytest.raises(InputError, match=r"\['status', 'model'\].*'input_status'"):
        build_requests(portfolio.assign(status="held", model="x"))
    with pytest.raises(InputError, match="prompt= must be a string"):
        build_requests(portfolio, prompt={"sytem": "typo"})


def test_infinite_and_unserialisable_values_name_row_and_column() -> None:
    df = pd.DataFrame({"ticker": ["A", "B"], "weight": [0.5, np.inf]})
    with pytest.raises(
        InputError, match=r"row 1 \(index 1\), column 'weight': inf is not valid JSON"
    ):
        build_requests(df)
    df = pd.DataFrame({"ticker": ["A", "B"], "weight": [0.5, 0.5], "blob": ["ok", object()]})
    with pytest.raises(InputError, match=r"row 1 \(index 1\), column 'blob': object value"):
        build_requests(df)


def test_user_template_fills_row_fields(portfolio: pd.DataFrame) -> None:
    requests = build_requests(
        portfolio,
        prompt={"system": "Be brief.", "user": "Assess {name} ({ticker}), {{literally}}."},
    )
    body = requests.set_index("ticker").body["AAPL"]
    assert body["messages"][0]["content"] == "Be brief."
    content = body["messages"][1]["content"].split("\n")
    assert content[0] == "Assess Apple Inc. (AAPL), {literally}."
    assert orjson.loads(content[-1])["ticker"] == "AAPL"
    with pytest.raises(InputError, match=r"uses \{isin\}, which is not a column"):
        build_requests(portfolio, prompt={"user": "Assess {isin}"})


class Answer(BaseModel):
    verdict: str
    confidence: float


def test_pydantic_schema_becomes_strict_json_schema(portfolio: pd.DataFrame) -> None:
    requests = build_requests(portfolio, schema=Answer)
    spec = requests.body.iloc[0]["response_format"]["json_schema"]
    assert spec["name"] == "Answer"
    assert spec["strict"] is True
    assert spec["schema"]["additionalProperties"] is False
    assert set(spec["schema"]["required"]) == {"verdict", "confidence"}
    assert requests.attrs["schema"] == spec["schema"]


def test_dict_schemas_are_checked_for_strict_mode(portfolio: pd.DataFrame) -> None:
    ok = {
        "type": "object",
        "properties": {"label": {"type": "string"}},
        "required": ["label"],
        "additionalProperties": False,
    }
    spec = build_requests(portfolio, schema={"name": "label", "schema": ok}).body.iloc[0][
        "response_format"
    ]
    assert spec["json_schema"]["name"] == "label"
    loose = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
    with pytest.raises(InputError, match=r"schema at \$: .*additionalProperties\": false"):
        build_requests(portfolio, schema=loose)
    optional = dict(ok, required=[])
    with pytest.raises(InputError, match=r"schema at \$: .*add \['label'\] to its 'required'"):
        build_requests(portfolio, schema=optional)
    with pytest.raises(InputError, match="not a valid JSON schema"):
        build_requests(portfolio, schema={"type": "objekt"})


def test_generic_frames_work_too() -> None:
    df = pd.DataFrame({"doc_id": [101, 102], "text": ["first", "second"]})
    requests = build_requests(
        df, key="doc_id", prompt="Classify the text.", schema=Answer, id_prefix="cls", max_tokens=20
    )
    assert requests["custom_id"].str.match(r"cls-10[12]-[0-9a-f]{8}$").all()
    assert requests.body.iloc[1]["messages"][1]["content"].endswith(
        '{"doc_id":102,"text":"second"}'
    )


def test_bodies_share_the_constant_parts(portfolio: pd.DataFrame) -> None:
    bodies = build_requests(portfolio).body.tolist()
    assert all(b["response_format"] is bodies[0]["response_format"] for b in bodies)
    assert all(b["messages"][0] is bodies[0]["messages"][0] for b in bodies)
    assert len({id(b["messages"][1]) for b in bodies}) == len(bodies)


def test_readme_requests_section_runs(
    testdata: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = readme.python_blocks(readme.section("requests"))
    assert blocks, "the README's requests section has no python example"
    (tmp_path / "testdata").mkdir()
    (tmp_path / "testdata" / "portfolio.csv").write_bytes((testdata / "portfolio.csv").read_bytes())
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        readme.run_block(block)
    assert (tmp_path / "out" / "requests-00000.jsonl").is_file()


def test_schema_is_copied_and_strict_can_be_turned_off(portfolio: pd.DataFrame) -> None:
    requests = build_requests(portfolio)
    requests.body.iloc[0]["response_format"]["json_schema"]["schema"]["required"].append("x")
    assert RISK_SCHEMA["required"] == [
        "position_key",
        "risk_score",
        "risk_level",
        "drivers",
        "rationale",
    ]
    loose = {"type": "object", "properties": {"label": {"type": "string"}}}
    spec = build_requests(portfolio, schema={"name": "loose", "strict": False, "schema": loose})
    assert spec.body.iloc[0]["response_format"]["json_schema"]["strict"] is False


def test_repeated_values_serialise_like_row_by_row() -> None:
    """Columns with few distinct values take a factorised fast path: same JSON as one row at a time."""
    n = 3000
    rng = np.random.default_rng(7)
    df = pd.DataFrame(
        {
            "ticker": [f"T{i}" for i in range(n)],
            "sector": rng.choice(["Energy", "Utilities", None], n),
            "beta": rng.choice([0.5, 1.25, np.nan, 1e-7], n),
            "lots": rng.choice([1, 2, 3], n),
            "flag": rng.choice([True, False], n),
            "rating": pd.Categorical(rng.choice(["A", "BB"], n)),
            "asof": pd.to_datetime(rng.choice(["2024-01-02", "2024-03-04"], n)),
        }
    )
    lines = [
        b["messages"][1]["content"].splitlines()[-1] for b in build_requests(df, key="ticker").body
    ]
    for pos in (0, 1, 17, n - 1):
        row = {k: v for k, v in df.iloc[pos].items() if not pd.isna(v)}
        row["asof"] = row["asof"].isoformat()
        expected = orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        assert lines[pos] == expected
    df.loc[2500, "beta"] = np.inf
    with pytest.raises(InputError, match=r"row 2500 \(index 2500\), column 'beta': inf"):
        build_requests(df)


def test_a_key_with_a_newline_cannot_hide_an_unsafe_key() -> None:
    ids = build_requests(pd.DataFrame({"ticker": ["A\nB", "C/D"], "weight": [0.5, 0.5]}))[
        "custom_id"
    ]
    assert ids.str.startswith(("risk-A_B-", "risk-C_D-")).all()
    assert ids.str.count("-").eq(3).all()  # both hashed, although "A_B" would be plain


@pytest.mark.parametrize("storage", ["pyarrow", "python"])
def test_text_columns_serialise_like_orjson_whatever_the_string_storage(storage: str) -> None:
    """pyarrow string columns with nothing to escape skip orjson: the bytes must not change."""
    texts = ["plain", "é中\u2028\x7f", "x y", None, 'quote"d', "back\\slash", "tab\there", "\x1f"]
    keys = [f"K{i}" for i in range(len(texts))] + [" padded ", "BRK/B"]
    df = pd.DataFrame(
        {
            "ticker": pd.Series(keys, dtype=pd.StringDtype(storage)),
            "notes": pd.Series([*texts, "ok", "ok"], dtype=pd.StringDtype(storage)),
        }
    )
    requests = build_requests(df)
    for pos, body in enumerate(requests.body):
        row = {"ticker": keys[pos]}  # the row as given; only its custom_id is stripped
        if pos < len(texts) and texts[pos] is not None:
            row["notes"] = texts[pos]
        elif pos >= len(texts):
            row["notes"] = "ok"
        assert body["messages"][1]["content"].split("\n")[-1] == orjson.dumps(row).decode()
    assert requests.custom_id.iloc[-2].startswith("risk-padded-")
    assert requests.custom_id.iloc[-1].startswith("risk-BRK_B-")
    plain = build_requests(df.iloc[:8])
    assert plain.custom_id.str.fullmatch(r"risk-K\d-[0-9a-f]{8}").all()
