"""to_jsonl: golden bytes, determinism, sharding at every limit, validation; iter_jsonl."""

from __future__ import annotations

import copy
import hashlib
import tracemalloc
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from portfolio_batch import InputError, build_requests, estimate_cost, load_portfolio, to_jsonl
from portfolio_batch._contract import MANIFEST_COLUMNS
from portfolio_batch._jsonl import iter_jsonl


@pytest.fixture
def requests(testdata: Path) -> pd.DataFrame:
    return build_requests(load_portfolio(testdata / "portfolio.csv"))


def _lines(manifest: pd.DataFrame) -> list[bytes]:
    out: list[bytes] = []
    for path in manifest["path"]:
        out.extend(Path(path).read_bytes().splitlines(keepends=True))
    return out


def test_golden_bytes(requests: pd.DataFrame, testdata: Path, tmp_path: Path) -> None:
    """testdata/batch/requests.jsonl is exactly what the defaults write (regenerate it with
    testdata/batch/make_golden.py when the prompt or schema changes on purpose)."""
    manifest = to_jsonl(requests, tmp_path)
    assert len(manifest) == 1
    written = Path(manifest.path.iloc[0]).read_bytes()
    golden = (testdata / "batch" / "requests.jsonl").read_bytes()
    assert written == golden
    assert manifest.sha256.iloc[0] == hashlib.sha256(golden).hexdigest()
    assert manifest.n_bytes.iloc[0] == len(golden)


def test_manifest_shape(requests: pd.DataFrame, tmp_path: Path) -> None:
    manifest = to_jsonl(requests, tmp_path / "out")
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    row = manifest.iloc[0]
    assert row["shard"] == 0
    assert Path(row["path"]) == tmp_path / "out" / "requests-00000.jsonl"
    assert row["n_requests"] == 40
    assert row["max_output_tokens"] == 40 * 400
    assert row["first_custom_id"] == requests.index[0]
    assert row["last_custom_id"] == requests.index[-1]
    assert row["model"] == "gpt-4o-mini"
    assert row["endpoint"] == "/v1/chat/completions"
    assert manifest.attrs["token_count"] == "approx"
    assert manifest.attrs["out_dir"] == str(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["requests-00000.jsonl"]


def test_lines_are_the_openai_input_format(requests: pd.DataFrame, tmp_path: Path) -> None:
    lines = _lines(to_jsonl(requests, tmp_path))
    for raw, (cid, row) in zip(lines, requests.iterrows(), strict=True):
        assert raw.endswith(b"\n") and b"\n" not in raw[:-1]
        assert b'", "' not in raw and b'": ' not in raw[:200]  # compact
        line = orjson.loads(raw)
        assert list(line) == ["custom_id", "method", "url", "body"]
        assert line == {
            "custom_id": cid,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": row["body"],
        }
        assert raw == orjson.dumps(line) + b"\n"


def test_deterministic_and_independent_of_how_bodies_were_built(
    requests: pd.DataFrame, tmp_path: Path
) -> None:
    first = to_jsonl(requests, tmp_path / "a")
    second = to_jsonl(requests, tmp_path / "b")
    assert first.sha256.tolist() == second.sha256.tolist()
    # Deep-copied bodies no longer share objects, so the general path writes them: same bytes.
    copied = requests.copy()
    copied["body"] = [copy.deepcopy(b) for b in requests["body"]]
    third = to_jsonl(copied, tmp_path / "c")
    assert third.sha256.tolist() == first.sha256.tolist()
    # A mix: one body edited (general path) between shared ones (spliced).
    mixed = requests.copy()
    edited = copy.deepcopy(mixed.body.iloc[3])
    edited["temperature"] = 0
    mixed["body"] = [edited if i == 3 else b for i, b in enumerate(mixed["body"])]
    lines = _lines(to_jsonl(mixed, tmp_path / "d"))
    assert orjson.loads(lines[3])["body"]["temperature"] == 0
    assert lines[:3] + lines[4:] == (_lines(first)[:3] + _lines(first)[4:])


def test_split_on_max_requests(requests: pd.DataFrame, tmp_path: Path) -> None:
    manifest = to_jsonl(requests, tmp_path, max_requests=7)
    assert manifest.n_requests.tolist() == [7, 7, 7, 7, 7, 5]
    assert manifest.shard.tolist() == list(range(6))
    assert [Path(p).name for p in manifest.path] == [f"requests-{i:05d}.jsonl" for i in range(6)]
    ids = requests.index.tolist()
    assert manifest.first_custom_id.tolist() == ids[::7]
    assert manifest.last_custom_id.tolist() == [*ids[6::7], ids[-1]]
    whole = to_jsonl(requests, tmp_path / "whole")
    assert b"".join(_lines(manifest)) == Path(whole.path.iloc[0]).read_bytes()
    for _, shard in manifest.iterrows():
        data = Path(shard.path).read_bytes()
        assert shard.sha256 == hashlib.sha256(data).hexdigest() and shard.n_bytes == len(data)
        assert shard.max_output_tokens == 400 * shard.n_requests


def test_split_on_max_bytes(requests: pd.DataFrame, tmp_path: Path) -> None:
    sizes = [len(line) for line in _lines(to_jsonl(requests, tmp_path / "whole"))]
    limit = sum(sizes[:5]) + 1  # five lines fit; a sixth never does
    manifest = to_jsonl(requests, tmp_path / "split", max_bytes=limit)
    assert (manifest.n_bytes <= limit).all()
    start = 0
    for n, n_bytes in zip(manifest.n_requests, manifest.n_bytes, strict=True):
        assert n_bytes == sum(sizes[start : start + n])
        if start + n < len(sizes):  # maximal: the next line would not have fitted
            assert n_bytes + sizes[start + n] > limit
        start += n
    assert start == len(requests)


def test_split_on_max_input_tokens_with_exact_counts(
    requests: pd.DataFrame, tmp_path: Path
) -> None:
    costs = estimate_cost(requests)
    tokens = costs.input_tokens.tolist()
    limit = sum(tokens[:4]) + 2
    manifest = to_jsonl(requests, tmp_path, max_input_tokens=limit, costs=costs)
    assert manifest.attrs["token_count"] == "exact"
    assert (manifest.est_input_tokens <= limit).all()
    assert manifest.est_input_tokens.sum() == sum(tokens)
    start = 0
    for n, est in zip(manifest.n_requests, manifest.est_input_tokens, strict=True):
        assert est == sum(tokens[start : start + n])
        if start + n < len(tokens):
            assert est + tokens[start + n] > limit
        start += n
    # Without costs=, max_input_tokens counts exactly by itself, with the same numbers.
    alone = to_jsonl(requests, tmp_path / "alone", max_input_tokens=limit)
    assert alone.est_input_tokens.tolist() == manifest.est_input_tokens.tolist()


def test_approx_tokens_are_close_to_exact(requests: pd.DataFrame, tmp_path: Path) -> None:
    approx = to_jsonl(requests, tmp_path).est_input_tokens.iloc[0]
    exact = estimate_cost(requests).input_tokens.sum()
    assert 0.8 * exact < approx < 1.25 * exact


def test_smallest_limit_wins(requests: pd.DataFrame, tmp_path: Path) -> None:
    manifest = to_jsonl(
        requests, tmp_path, max_requests=30, max_bytes=10 * 2**20, max_input_tokens=10**9
    )
    assert manifest.n_requests.tolist() == [30, 10]


def test_a_single_request_over_a_limit_is_named(requests: pd.DataFrame, tmp_path: Path) -> None:
    first = requests.index[0]
    with pytest.raises(
        InputError, match=rf"custom_id '{first}': its line is [\d,]+ bytes, over max_bytes=100"
    ):
        to_jsonl(requests, tmp_path, max_bytes=100)
    with pytest.raises(InputError, match=rf"custom_id '{first}': it alone has [\d,]+ input tokens"):
        to_jsonl(requests, tmp_path, max_input_tokens=10)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_stale_shards_of_a_bigger_write_are_removed(requests: pd.DataFrame, tmp_path: Path) -> None:
    to_jsonl(requests, tmp_path, max_requests=10)
    (tmp_path / "notes.txt").write_text("mine")
    to_jsonl(requests, tmp_path, max_requests=20)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt",
        "requests-00000.jsonl",
        "requests-00001.jsonl",
    ]


def test_url_method_and_model_are_validated_per_line(
    requests: pd.DataFrame, tmp_path: Path
) -> None:
    bad_url = requests.copy()
    bad_url.loc[bad_url.index[2], "url"] = "/chat/completions"
    with pytest.raises(
        InputError, match=rf"custom_id '{requests.index[2]}': url '/chat/completions' differs"
    ):
        to_jsonl(bad_url, tmp_path)
    bad_method = requests.copy()
    bad_method.loc[bad_method.index[1], "method"] = "GET"
    with pytest.raises(InputError, match=rf"custom_id '{requests.index[1]}': method 'GET'"):
        to_jsonl(bad_method, tmp_path)
    two_models = requests.copy()
    body = copy.deepcopy(two_models.body.iloc[5])
    body["model"] = "gpt-4o"
    two_models["body"] = [body if i == 5 else b for i, b in enumerate(two_models["body"])]
    with pytest.raises(
        InputError, match=rf"custom_id '{requests.index[5]}' uses model 'gpt-4o'.*one model"
    ):
        to_jsonl(two_models, tmp_path / "models")
    assert not list((tmp_path / "models").glob("*.jsonl"))


def test_bodies_with_numpy_pandas_and_nan_values(tmp_path: Path) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": np.int64(5),
        "temperature": np.float64("nan"),
        "seed": np.int32(7),
        "metadata": {"asof": pd.Timestamp("2024-05-01")},
    }
    frame = pd.DataFrame(
        {"custom_id": ["a"], "method": ["POST"], "url": ["/v1/chat/completions"], "body": [body]},
        index=pd.Index(["a"], name="custom_id"),
    )
    manifest = to_jsonl(frame, tmp_path)
    line = orjson.loads(Path(manifest.path.iloc[0]).read_bytes())
    assert line["body"] == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "temperature": None,
        "seed": 7,
        "metadata": {"asof": "2024-05-01T00:00:00"},
    }
    assert manifest.max_output_tokens.iloc[0] == 5
    body_bad = dict(body, metadata={"blob": object()})
    frame["body"] = [body_bad]
    with pytest.raises(InputError, match=r"custom_id 'a': body field metadata.blob holds a object"):
        to_jsonl(frame, tmp_path / "bad")
    frame["body"] = ['{"model": "x"}']
    with pytest.raises(InputError, match=r"custom_id 'a': body is a str.*parse it first"):
        to_jsonl(frame, tmp_path / "bad")


def test_bad_frames(requests: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no column\(s\) \['body'\]"):
        to_jsonl(requests.drop(columns="body"), tmp_path)
    with pytest.raises(InputError, match="empty"):
        to_jsonl(requests.iloc[:0], tmp_path)
    dup = pd.concat([requests.iloc[:3], requests.iloc[[1]]])
    with pytest.raises(InputError, match=rf"custom_id '{requests.index[1]}' is in rows 1 and 3"):
        to_jsonl(dup, tmp_path)
    with pytest.raises(InputError, match="max_requests=0 must be a positive integer"):
        to_jsonl(requests, tmp_path, max_requests=0)
    costs = estimate_cost(requests.iloc[:5])
    with pytest.raises(InputError, match=rf"costs= has no row for custom_id '{requests.index[5]}'"):
        to_jsonl(requests, tmp_path, costs=costs)


def test_azure_lines(testdata: Path, tmp_path: Path) -> None:
    requests = build_requests(
        load_portfolio(testdata / "portfolio.csv"),
        model="risk-batch-deployment",
        endpoint="/chat/completions",
    )
    manifest = to_jsonl(requests, tmp_path)
    line = orjson.loads(_lines(manifest)[0])
    assert line["url"] == "/chat/completions" and line["body"]["model"] == "risk-batch-deployment"
    assert manifest.endpoint.iloc[0] == "/chat/completions"


@pytest.mark.slow
def test_memory_stays_flat_however_many_rows(tmp_path: Path) -> None:
    n = 60_000
    df = pd.DataFrame(
        {"ticker": [f"T{i:06d}" for i in range(n)], "weight": 1 / n, "notes": "x" * 200}
    )
    requests = build_requests(df)
    tracemalloc.start()
    try:
        manifest = to_jsonl(requests, tmp_path, max_requests=25_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    written = int(manifest.n_bytes.sum())
    assert manifest.n_requests.tolist() == [25_000, 25_000, 10_000]
    assert written > 70 * 2**20
    assert peak < 60 * 2**20, f"peak {peak / 2**20:.0f} MiB while writing {written / 2**20:.0f} MiB"


def test_iter_jsonl_streams_the_golden_output(testdata: Path, tmp_path: Path) -> None:
    lines = list(iter_jsonl(testdata / "batch" / "output.jsonl"))
    assert len(lines) == 37
    assert all(line["id"].startswith("batch_req_") for line in lines)
    numbered = list(iter_jsonl(testdata / "batch" / "errors.jsonl", line_numbers=True))
    assert [n for n, _ in numbered] == [1, 2, 3]
    path = tmp_path / "broken.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2\n{"a": 3}\n')
    with pytest.raises(InputError, match=r"broken.jsonl, line 3: not valid JSON.*errors='skip'"):
        list(iter_jsonl(path))
    malformed: list[tuple[int, str]] = []
    assert list(iter_jsonl(path, errors="skip", malformed=malformed)) == [{"a": 1}, {"a": 3}]
    assert [n for n, _ in malformed] == [3]


def test_golden_results_cover_every_request(testdata: Path) -> None:
    requested = [
        orjson.loads(line)["custom_id"]
        for line in (testdata / "batch" / "requests.jsonl").read_bytes().splitlines()
    ]
    output = list(iter_jsonl(testdata / "batch" / "output.jsonl"))
    errors = list(iter_jsonl(testdata / "batch" / "errors.jsonl"))
    got = [line["custom_id"] for line in output + errors]
    assert sorted(got) == sorted(requested) and got != requested  # all answered, out of order
    finish = {
        line["custom_id"]: line["response"]["body"]["choices"][0]["finish_reason"]
        for line in output
    }
    assert list(finish.values()).count("length") == 1
    codes = sorted(
        (line["error"] or {}).get("code") or line["response"]["body"]["error"]["type"]
        for line in errors
    )
    assert codes == ["batch_expired", "invalid_request_error", "server_error"]


def test_an_iterable_of_frames_writes_the_same_bytes(testdata: Path, tmp_path: Path) -> None:
    portfolio = load_portfolio(testdata / "portfolio.csv")
    whole = to_jsonl(build_requests(portfolio), tmp_path / "whole", max_requests=15)
    parts = (build_requests(portfolio.iloc[i : i + 7]) for i in range(0, len(portfolio), 7))
    streamed = to_jsonl(parts, tmp_path / "streamed", max_requests=15)
    assert streamed.drop(columns="path").equals(whole.drop(columns="path"))
    assert streamed.n_requests.tolist() == [15, 15, 10]
    requests = build_requests(portfolio)
    with pytest.raises(
        InputError, match=rf"custom_id '{requests.index[3]}' is in two of the frames"
    ):
        to_jsonl([requests.iloc[:5], requests.iloc[3:8]], tmp_path / "dup")
    azure = build_requests(portfolio, endpoint="/chat/completions")
    with pytest.raises(
        InputError, match=r"url '/chat/completions' differs from the file's endpoint"
    ):
        to_jsonl([requests.iloc[:5], azure.iloc[5:8]], tmp_path / "mixed")
    with pytest.raises(InputError, match="No requests were given"):
        to_jsonl([requests.iloc[:0]], tmp_path / "none")


def test_build_requests_in_chunks_writes_the_same_bytes(testdata: Path, tmp_path: Path) -> None:
    portfolio = load_portfolio(testdata / "portfolio.csv")
    whole = to_jsonl(build_requests(portfolio), tmp_path / "whole", max_requests=15)
    chunks = build_requests(portfolio, chunksize=7)
    assert not isinstance(chunks, pd.DataFrame)
    streamed = to_jsonl(chunks, tmp_path / "chunked", max_requests=15)
    assert streamed["sha256"].tolist() == whole["sha256"].tolist()
    frames = list(build_requests(portfolio, chunksize=7))
    assert [len(f) for f in frames] == [7, 7, 7, 7, 7, 5]
    assert pd.concat(frames).index.equals(build_requests(portfolio).index)


def test_build_requests_in_chunks_names_the_row_of_the_whole_frame(tmp_path: Path) -> None:
    df = pd.DataFrame({"ticker": [f"T{i}" for i in range(10)], "weight": [0.1] * 10})
    # Bad options are refused at the call, before any chunk is iterated.
    with pytest.raises(InputError, match="max_tokens"):
        build_requests(df, chunksize=4, max_tokens=0)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="chunksize"):
            build_requests(df, chunksize=bad)
    # A problem in a later chunk names the row of df, not of the chunk.
    empty = df.copy()
    empty.loc[8, "ticker"] = None
    with pytest.raises(InputError, match=r"row 8 \(index 8\): the key column 'ticker' is empty"):
        to_jsonl(build_requests(empty, chunksize=4), tmp_path / "empty")
    inf = df.copy()
    inf.loc[6, "weight"] = float("inf")
    with pytest.raises(InputError, match=r"row 6 \(index 6\), column 'weight'"):
        list(build_requests(inf, chunksize=4))
    dup = df.copy()
    dup.loc[9, "ticker"] = "T1"
    with pytest.raises(InputError, match=r"custom_id 'risk-T1-\w+' is in two of the frames"):
        to_jsonl(build_requests(dup, chunksize=4), tmp_path / "dup")
    assert "_pb_row_offset" not in df.attrs
    assert all("_pb_row_offset" not in f.attrs for f in build_requests(df, chunksize=4))


def _wide_portfolio(n: int) -> pd.DataFrame:
    """Values JSON must escape (quotes, backslashes, newlines), non-ASCII, missing values, a
    repeated column and a unique one: every kind of fragment a user message is made of."""
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "ticker": [f"T{i:05d}" for i in range(n)],
            "name": rng.choice(['Say "hi"', "back\\slash", "line\nbreak", "Zürich AG"], n),
            "weight": np.where(rng.random(n) < 0.1, np.nan, rng.random(n)),
            "shares": rng.integers(0, 10_000, n),
            "notes": [None if i % 5 == 0 else f'note "{i}"' for i in range(n)],
        }
    )


@pytest.mark.parametrize(
    "options",
    [{}, {"prompt": {"user": "Review {name} ({ticker}); weight {weight}."}}, {"model": "o3"}],
)
def test_streamed_chunks_write_what_their_frames_write(
    options: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """to_jsonl(build_requests(df, chunksize=N)) writes the chunks it is handed straight from
    their user messages, without a dict per body: the same bytes and manifest as the frames."""
    from portfolio_batch._requests import PreparedRequests

    df = _wide_portfolio(6000)
    whole = to_jsonl(build_requests(df, **options), tmp_path / "whole", max_requests=2500)
    chunks = build_requests(df, chunksize=1700, **options)  # the first chunk is built here
    made = []
    frame = PreparedRequests.frame
    monkeypatch.setattr(PreparedRequests, "frame", lambda self: made.append(1) or frame(self))
    streamed = to_jsonl(chunks, tmp_path / "streamed", max_requests=2500)
    columns = [c for c in MANIFEST_COLUMNS if c != "path"]
    pd.testing.assert_frame_equal(streamed[columns], whole[columns])
    # reasoning bodies have no splicer: their chunks become frames, written the usual way
    assert len(made) == (3 if options.get("model") == "o3" else 0)


def test_chunk_at_once_path_writes_what_the_row_by_row_path_writes(
    requests: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_Splicer.chunk serialises a whole chunk of shared-object bodies at once, or hands it to
    the row-by-row path: bytes and token estimates are the same either way."""
    from portfolio_batch import _jsonl

    frames = {"built": requests}
    # a user message whose content is a list of parts: its estimate counts its JSON
    parts = requests.copy()
    body = parts.body.iloc[2]
    parts["body"] = [
        dict(b, messages=[b["messages"][0], {"role": "user", "content": [{"type": "text"}]}])
        if i == 2
        else b
        for i, b in enumerate(parts.body)
    ]
    assert parts.body.iloc[2]["response_format"] is body["response_format"]
    frames["content list"] = parts
    # a numpy value orjson only writes with its numpy option: the row-by-row path writes it
    numpy_value = requests.copy()
    numpy_value["body"] = [
        dict(
            b,
            messages=[
                b["messages"][0],
                {"role": "user", "content": np.str_("x"), "n": np.int64(1)},
            ],
        )
        if i == 4
        else b
        for i, b in enumerate(numpy_value.body)
    ]
    frames["numpy value"] = numpy_value
    # the same keys in another order: not spliced, so written in its own order
    reordered = requests.copy()
    reordered["body"] = [
        {k: b[k] for k in reversed(list(b))} if i == 1 else b for i, b in enumerate(reordered.body)
    ]
    frames["key order"] = reordered
    written = {name: to_jsonl(f, tmp_path / "chunk" / name) for name, f in frames.items()}
    monkeypatch.setattr(_jsonl._Splicer, "chunk", lambda self, *a, **k: None)
    for name, f in frames.items():
        by_row = to_jsonl(f, tmp_path / "row" / name)
        assert _lines(written[name]) == _lines(by_row), name
        assert written[name].est_input_tokens.tolist() == by_row.est_input_tokens.tolist(), name
    assert b'"n":1' in _lines(written["numpy value"])[4]
    assert orjson.loads(_lines(written["key order"])[1])["body"].popitem()[0] == "model"


def test_a_shard_fills_up_to_its_limits_exactly(requests: pd.DataFrame, tmp_path: Path) -> None:
    """A line that lands a shard exactly on max_bytes / max_input_tokens still goes in it."""
    sizes = [len(line) for line in _lines(to_jsonl(requests, tmp_path / "whole"))]
    manifest = to_jsonl(requests, tmp_path / "bytes", max_bytes=sum(sizes[:5]))
    assert manifest.n_requests.iloc[0] == 5 and manifest.n_bytes.iloc[0] == sum(sizes[:5])
    costs = estimate_cost(requests)
    limit = int(costs.input_tokens.iloc[:4].sum())
    manifest = to_jsonl(requests, tmp_path / "tokens", costs=costs, max_input_tokens=limit)
    assert manifest.n_requests.iloc[0] == 4 and manifest.est_input_tokens.iloc[0] == limit
