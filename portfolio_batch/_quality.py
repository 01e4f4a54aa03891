"""Answer-quality checks: flags on a results frame whose answers cannot be trusted as they are.

A run can succeed on every row and still be worthless: a model too small to follow the prompt
gives every position the same score, copies its instructions into the rationale ("One or two
sentences"), or a provider maps answers to the wrong requests. ``check_answers`` looks for that:

    >>> flags = check_answers(results)  # doctest: +SKIP
    >>> flags[["check", "field", "severity", "count", "message"]]  # doctest: +SKIP
                check      field severity  count                                   message
    0      same_value risk_score   severe     39  39 of 40 answers give risk_score = 0
    1  echoed_prompt  rationale   severe     39  39 of 40 answers repeat the prompt ...

``summarize``, ``report`` and the CLI run it and show its flags.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from portfolio_batch._aggregate import echoes_key, need_columns
from portfolio_batch._requests import (
    DEFAULT_SYSTEM_PROMPT,
    DEFAULT_USER_PROMPT,
    ECHO_FIELD,
    RISK_SCHEMA,
    SchemaArg,
    schema_from,
)
from portfolio_batch.errors import InputError

__all__ = ["CHECKS", "FLAG_COLUMNS", "check_answers", "headline", "score_bands"]

# in the order flags are listed (within a severity)
CHECKS = (
    "key_mismatch",
    "same_value",
    "echoed_prompt",
    "out_of_range",
    "level_mismatch",
    "refusal",
    "truncated",
)
FLAG_COLUMNS = ("check", "field", "severity", "count", "share", "examples", "message", "advice")
_CUT = ("length", "max_output_tokens")
# Words an echo must have to count (a driver "beta" is in the prompt too, and is a fine driver).
_MIN_ECHO_WORDS = 3
# Refusals written into the answer's text fields instead of the API's refusal field.
_REFUSAL = r"^\s*(?:i['’]?m sorry|i am sorry|sorry, (?:but )?i|i can(?:no|['’])t|i cannot|i['’]?m (?:not able|unable)|i am (?:not able|unable)|as an ai\b)"
# Enums whose order is a scale: with no bands in the prompt, a score range is split evenly.
_SCALES = (("low", "medium", "high"), ("low", "moderate", "high"), ("low", "high"))
_NUMBER = r"(-?\d+(?:\.\d+)?)"
_PUNCT = string.punctuation + "’‘“”–—…«»"  # trimmed off a word by the echo check's pre-test


@dataclass
class _Context:
    results: pd.DataFrame
    schema: dict[str, Any]
    texts: list[str]  # the system prompt, user prompt and schema descriptions, as sent
    key: str | None
    ok: np.ndarray  # rows that succeeded
    labels: np.ndarray  # what an example names a row by: its key, else its custom_id


def check_answers(
    results: pd.DataFrame,
    *,
    requests: pd.DataFrame | None = None,
    schema: SchemaArg = None,
    prompt: str | Mapping[str, str] | None = None,
    key: str | None = None,
    min_rows: int = 5,
    same_share: float = 0.9,
    examples: int = 3,
) -> pd.DataFrame:
    """One row per problem found in the answers of ``results``; empty when nothing looks wrong.

    Columns: ``check``, ``field``, ``severity`` (``severe``: the answers as a whole cannot be
    trusted; ``warning``: some rows, or a pattern that may be genuine), ``count`` (rows),
    ``share`` (of the rows the check looks at: succeeded rows for answer checks, every row for
    ``refusal``/``truncated``/``key_mismatch``), ``examples`` (a few ``key: value`` strings),
    ``message`` (what is wrong, with numbers) and ``advice`` (what to do). Checks:

    - ``same_value``: one value in at least ``same_share`` (90 %) of the succeeded rows, with at
      least ``min_rows`` (5) of them, in any answer field but the key echo; ``severe`` for scores,
      text and lists, ``warning`` for an enum or boolean (a homogeneous portfolio can be all "low").
    - ``echoed_prompt``: a text field (or list item) that is a run of at least 3 words of the
      system prompt, the user prompt or a schema ``description``, or the field's own name.
    - ``out_of_range``: a number outside the schema's ``minimum``/``maximum``, or a value not in
      its ``enum``.
    - ``level_mismatch``: a score that contradicts its level: bands read from the prompt
      (``low below 34, medium 34-66, high above 66``), else an even split of the score's range for
      a low/medium/high enum; a score counts only when more than 5 % of the range outside its band.
    - ``refusal``: rows the model refused (``error_code == "refusal"``), or whose text starts like
      a refusal ("I'm sorry, ...").
    - ``truncated``: answers cut at ``max_tokens`` (``finish_reason == "length"``).
    - ``key_mismatch``: answers whose ``position_key`` is not their request's key (marked by
      ``aggregate_df``, or found here in a frame built otherwise); always ``severe``.

    Per-row checks are ``severe`` when they hit at least half their rows. The schema, prompt and
    key come from the arguments, else ``requests.attrs``/bodies, else ``results.attrs`` (set by
    ``aggregate_df``/``run_sync``), else the defaults when the results have the default fields.
    ``attrs["checked"]`` is the number of succeeded rows, ``attrs["trusted"]`` those no flag
    (other than a ``warning`` on one shared value) points at.

        >>> frame = pd.DataFrame({"status": ["succeeded"] * 6, "risk_score": [0] * 6,
        ...                       "risk_level": ["low"] * 6, "drivers": [["beta"], ["size"]] * 3,
        ...                       "rationale": ["One or two sentences"] * 6})
        >>> check_answers(frame)[["check", "field", "severity", "count"]].values.tolist()
        [['same_value', 'risk_score', 'severe', 6], ['same_value', 'rationale', 'severe', 6], ['echoed_prompt', 'rationale', 'severe', 6], ['same_value', 'risk_level', 'warning', 6]]
    """
    need_columns(results, "results", ("status",))
    if not (isinstance(min_rows, int) and min_rows >= 1):
        raise InputError(f"min_rows={min_rows!r} must be a positive integer, e.g. min_rows=5")
    if not 0 < same_share <= 1:
        raise InputError(f"same_share={same_share!r} must be a fraction in (0, 1], e.g. 0.9")
    ctx = _context(results, requests=requests, schema=schema, prompt=prompt, key=key)
    flags: list[dict[str, Any]] = []
    suspect = np.zeros(len(results), dtype=bool)

    def add(
        check: str,
        field: str | None,
        severity: str,
        rows: np.ndarray,
        total: int,
        message: str,
        advice: str,
        show: Callable[[int], str],
    ) -> None:
        picked = np.flatnonzero(rows)
        flags.append(
            {
                "check": check,
                "field": field,
                "severity": severity,
                "count": len(picked),
                "share": len(picked) / total if total else 0.0,
                "examples": [f"{ctx.labels[i]}: {show(i)}" for i in picked[:examples].tolist()],
                "message": message,
                "advice": advice,
            }
        )
        if not (check == "same_value" and severity == "warning"):
            suspect[rows] = True

    for check in (_key_mismatch, _same_value, _echoed, _out_of_range, _level_mismatch):
        check(ctx, add, min_rows=min_rows, same_share=same_share)
    _refusals(ctx, add)
    _truncated(ctx, add)

    out = pd.DataFrame(flags, columns=list(FLAG_COLUMNS))
    if len(out):
        order = {c: n for n, c in enumerate(CHECKS)}
        out = out.sort_values(
            ["severity", "check"],
            key=lambda s: (
                s.map({"severe": 0, "warning": 1}) if s.name == "severity" else s.map(order)
            ),
            kind="stable",
            ignore_index=True,
        )
    out["count"] = out["count"].astype("int64")
    out["share"] = out["share"].astype("float64")
    out.attrs = {"checked": int(ctx.ok.sum()), "trusted": int((ctx.ok & ~suspect).sum())}
    return out


def headline(flags: pd.DataFrame | None) -> str | None:
    """The one line a report or CLI shows when a flag is ``severe``, else None.

    >>> headline(pd.DataFrame({"severity": ["severe"], "message": ["39 of 40 answers give risk_score = 0"]}))
    'The answers look degenerate: 39 of 40 answers give risk_score = 0.'
    """
    if flags is None or not len(flags):
        return None
    severe = flags[flags["severity"] == "severe"]
    if not len(severe):
        return None
    return "The answers look degenerate: " + "; ".join(map(str, severe["message"])) + "."


# ---------------------------------------------------------------------------- context


def _context(
    results: pd.DataFrame,
    *,
    requests: pd.DataFrame | None,
    schema: SchemaArg,
    prompt: str | Mapping[str, str] | None,
    key: str | None,
) -> _Context:
    req_attrs = requests.attrs if isinstance(requests, pd.DataFrame) else {}
    if schema is not None:
        schema_dict = schema_from(schema)[1]
    else:
        found = req_attrs.get("schema") or results.attrs.get("schema")
        if isinstance(found, Mapping):
            schema_dict = dict(found)
        elif _has_default_fields(results):  # e.g. a results.csv read back: attrs are gone
            schema_dict = RISK_SCHEMA
        else:
            schema_dict = {}
    texts: list[str] = []
    if prompt is not None:
        if isinstance(prompt, str):
            texts.append(prompt)
        else:
            texts += [str(v) for v in prompt.values()]
    else:
        texts += _request_prompts(requests)
        if not texts and isinstance(results.attrs.get("system_prompt"), str):
            texts.append(results.attrs["system_prompt"])
        if not texts and schema_dict is RISK_SCHEMA:
            texts += [DEFAULT_SYSTEM_PROMPT, DEFAULT_USER_PROMPT]
    texts += list(_descriptions(schema_dict))
    key = key or req_attrs.get("key") or results.attrs.get("key")
    if key is None and schema_dict is RISK_SCHEMA:
        key = "ticker"  # build_requests' default key, with its default schema
    if key not in results.columns:
        key = None
    ok = (results["status"] == "succeeded").to_numpy(dtype=bool, na_value=False)
    if key is not None:
        labels = results[key].astype(str).to_numpy(dtype=object)
    elif "custom_id" in results.columns:
        labels = results["custom_id"].astype(str).to_numpy(dtype=object)
    else:
        labels = results.index.astype(str).to_numpy(dtype=object)
    return _Context(results, schema_dict, texts, key, ok, labels)


def _has_default_fields(results: pd.DataFrame) -> bool:
    return all(f in results.columns for f in RISK_SCHEMA["properties"] if f != ECHO_FIELD)


def _request_prompts(requests: pd.DataFrame | None) -> list[str]:
    """The first request's system and user messages (its last line, the row's JSON, left out)."""
    if (
        not isinstance(requests, pd.DataFrame)
        or "body" not in requests.columns
        or not len(requests)
    ):
        return []
    body = requests["body"].iloc[0]
    out = []
    for message in (body.get("messages") if isinstance(body, dict) else None) or ():
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            continue
        if message.get("role") == "user":
            content = content.rsplit("\n", 1)[0] if "\n" in content else ""
        out.append(content)
    return out


def _descriptions(node: Any) -> Iterable[str]:
    if isinstance(node, Mapping):
        for word in ("description", "title"):
            if isinstance(node.get(word), str):
                yield node[word]
        for value in node.values():
            yield from _descriptions(value)
    elif isinstance(node, list):
        for value in node:
            yield from _descriptions(value)


def _fields(ctx: _Context) -> dict[str, Mapping[str, Any]]:
    """The schema's top-level fields present as columns, with their JSON schema."""
    props = ctx.schema.get("properties") or {}
    return {f: p for f, p in props.items() if f in ctx.results.columns and isinstance(p, Mapping)}


def _kind(prop: Mapping[str, Any]) -> str:
    if "enum" in prop:
        return "enum"
    t = prop.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), None)
    return {"integer": "number", "number": "number"}.get(str(t), str(t))


def _plain(value: Any) -> str:
    return str(value.item() if isinstance(value, np.generic) else value)


def _short(value: Any, width: int = 60) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------------------- checks

_Add = Callable[..., None]


def _key_mismatch(ctx: _Context, add: _Add, **_: Any) -> None:
    res = ctx.results
    marked = (
        (res["error_code"] == "key_mismatch").to_numpy(dtype=bool, na_value=False)
        if "error_code" in res.columns
        else np.zeros(len(res), dtype=bool)
    )
    # a frame not made by aggregate_df (merged, hand-built) may hold unchecked echoes
    unchecked = np.zeros(len(res), dtype=bool)
    if ctx.key is not None and ECHO_FIELD in _fields(ctx):
        echo = res[ECHO_FIELD].to_numpy(dtype=object)
        sent = res[ctx.key].to_numpy(dtype=object)
        differ = np.flatnonzero(ctx.ok & (echo != sent))
        if len(differ):
            keys = {str(k) for k in sent}
            unchecked[[i for i in differ.tolist() if not echoes_key(echo[i], sent[i], keys)]] = True
    rows = marked | unchecked
    if not rows.any():
        return
    n = int(rows.sum())
    message = (
        f"{n} of {len(res)} answers name another position than their request's in {ECHO_FIELD}"
    )
    advice = (
        "the answers may be mapped to the wrong requests (or the model did not copy the key): "
        "these rows are not counted as succeeded; retry_failed() sends them again"
    )
    if unchecked.any():
        advice = f"{int(unchecked.sum())} of them are still marked succeeded: {advice}"
    echo_col = res[ECHO_FIELD] if ECHO_FIELD in res.columns else None

    def show(i: int) -> str:
        echo = echo_col.iloc[i] if echo_col is not None else None
        if not isinstance(echo, str) and "content" in res.columns:
            echo = _echo_in(res["content"].iloc[i])  # aggregate_df left the fields empty
        return f"answered {_short(echo)}" if isinstance(echo, str) else "no key in the answer"

    add("key_mismatch", ECHO_FIELD, "severe", rows, len(res), message, advice, show)


def _echo_in(content: Any) -> Any:
    """The key echo in a raw answer text, if it has one."""
    import orjson

    try:
        answer = orjson.loads(content) if isinstance(content, str) else None
    except orjson.JSONDecodeError:
        return None
    return answer.get(ECHO_FIELD) if isinstance(answer, dict) else None


def _same_value(ctx: _Context, add: _Add, *, min_rows: int, same_share: float, **_: Any) -> None:
    scored = int(ctx.ok.sum())
    if scored < min_rows:
        return
    for field, prop in _fields(ctx).items():
        if field == ECHO_FIELD:
            continue
        codes = _codes(ctx.results[field].to_numpy(dtype=object), ctx.ok)
        if codes is None:
            continue
        counted = codes[codes >= 0]
        if len(counted) < min_rows:
            continue
        top_code = int(np.bincount(counted).argmax())
        rows = codes == top_code
        n = int(rows.sum())
        if n < same_share * scored:
            continue
        value = ctx.results[field].iloc[int(np.flatnonzero(rows)[0])]
        kind = _kind(prop)
        severity = "warning" if kind in ("enum", "boolean") else "severe"
        message = f"{n} of {scored} answers give {field} = {_short(value)}"
        advice = (
            "the model answers the same whatever the position (too small a model, or a prompt "
            "it does not follow): do not use these answers; try a larger model"
            if severity == "severe"
            else "may be genuine for a homogeneous portfolio; check the scores and rationales"
        )
        add(
            "same_value",
            field,
            severity,
            rows,
            scored,
            message,
            advice,
            lambda i, f=field: _short(ctx.results[f].iloc[i]),
        )


def _codes(values: np.ndarray, ok: np.ndarray) -> np.ndarray | None:
    """A code per row for its value (lists and dicts by their JSON), -1 where not counted."""
    keep = ok & pd.notna(pd.Series(values, dtype=object)).to_numpy()
    if not keep.any():
        return None
    probe: np.ndarray | None = values[keep]
    if any(isinstance(v, (list, tuple, dict)) for v in values[keep][:50]):
        probe = _as_text(values[keep])
    if probe is None:
        return None
    try:
        found, _ = pd.factorize(pd.Series(probe, dtype=object))
    except TypeError:  # unhashable values
        return None
    codes = np.full(len(values), -1, dtype=np.int64)
    codes[keep] = found
    return codes


def _as_text(values: np.ndarray) -> np.ndarray | None:
    """Lists of strings joined in pyarrow (fast), anything else as JSON; None if unhashable."""
    try:
        lists = pa.array(values, type=pa.list_(pa.large_string()), from_pandas=True)
        joined = pc.binary_join(lists, pa.scalar("\x1f", pa.large_string()))
        return np.asarray(joined.to_numpy(zero_copy_only=False), dtype=object)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    import orjson

    try:
        return np.array(
            [orjson.dumps(v, default=str, option=orjson.OPT_SORT_KEYS) for v in values],
            dtype=object,
        )
    except TypeError:
        return None


def _normalised(strings: pa.Array) -> pa.Array:
    """Lower case, every run of non-alphanumerics one space, trimmed: in pyarrow, all at once."""
    lower = pc.utf8_lower(strings)
    spaced = pc.replace_substring_regex(lower, pattern=r"[^\p{L}\p{N}]+", replacement=" ")
    return pc.utf8_trim_whitespace(spaced)


def _norm(text: str) -> str:
    return str(_normalised(pa.array([text]))[0].as_py())


def _text_values(column: pd.Series, ok: np.ndarray) -> tuple[pa.Array, np.ndarray] | None:
    """(strings, row of each) for a text column or a column of lists of strings; converted by
    pyarrow in one call when the column holds only those, else row by row."""
    rows = np.flatnonzero(ok)
    values = column.to_numpy(dtype=object)[rows]
    try:
        return pa.array(values, type=pa.large_string(), from_pandas=True), rows
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    try:
        lists = pa.array(values, type=pa.list_(pa.large_string()), from_pandas=True)
        parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
        return pc.list_flatten(lists), rows[parents]
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    strings: list[str] = []
    owner: list[int] = []
    for i, v in zip(rows.tolist(), values.tolist(), strict=True):
        if isinstance(v, str):
            strings.append(v)
            owner.append(i)
        elif isinstance(v, (list, tuple)):
            items = [x for x in v if isinstance(x, str)]
            strings += items
            owner += [i] * len(items)
    if not strings:
        return None
    return pa.array(strings, type=pa.large_string()), np.asarray(owner, dtype=np.intp)


def _in_phrases(strings: pa.Array, phrases: set[str], pairs: set[str]) -> np.ndarray:
    """Which strings, normalised, are one of ``phrases`` (whose first two words are ``pairs``).

    Each distinct string is looked at once. The regex normalisation costs ~5 µs a string, so it
    only runs on the candidates of a cheap test: a first or second word missing or with
    punctuation inside, or a first pair of words that starts a phrase. A legitimate
    rationale ("NVDA's weight ...") fails that test and is never normalised.
    """
    uniq = pc.unique(strings)
    parts = pc.utf8_split_whitespace(uniq, max_splits=2)
    count = pc.fill_null(pc.list_value_length(parts), 0)
    padded = pc.if_else(pc.greater(count, 1), parts, pa.scalar(["", ""], parts.type))
    w0, w1 = (
        pc.utf8_trim(pc.utf8_lower(pc.list_element(padded, k)), characters=_PUNCT) for k in (0, 1)
    )
    # an empty second word (one word only) is not alphanumeric either
    odd = pc.or_(pc.invert(pc.utf8_is_alnum(w0)), pc.invert(pc.utf8_is_alnum(w1)))
    pair = pc.binary_join_element_wise(w0, w1, pa.scalar(" ", w0.type))
    starts = pc.is_in(pair, value_set=pa.array(sorted(pairs), type=w0.type))
    maybe = pc.fill_null(pc.or_(odd, starts), False)
    candidates = np.flatnonzero(maybe.to_numpy(zero_copy_only=False))
    hit_unique = np.zeros(len(uniq), dtype=bool)
    if len(candidates):
        known = pa.array(sorted(phrases), type=pa.large_string())
        norm = _normalised(uniq.take(pa.array(candidates)).cast(pa.large_string()))
        found = pc.fill_null(pc.is_in(norm, value_set=known), False)
        hit_unique[candidates[found.to_numpy(zero_copy_only=False)]] = True
    position = pc.index_in(strings, value_set=uniq).to_numpy(zero_copy_only=False)
    hits: np.ndarray = hit_unique[position.astype(np.intp)]
    return hits


def _echoed(ctx: _Context, add: _Add, **_: Any) -> None:
    phrases: set[str] = set()
    for text in ctx.texts:
        words = _norm(text).split()
        phrases.update(
            " ".join(words[i:j])
            for i in range(len(words))
            for j in range(i + _MIN_ECHO_WORDS, len(words) + 1)
        )
    for text in _descriptions(ctx.schema):  # a whole description, however short
        phrases.add(_norm(text))
    pairs = {" ".join(p.split()[:2]) for p in phrases}
    scored = int(ctx.ok.sum())
    for field, prop in _fields(ctx).items():
        kind = _kind(prop)
        items = prop.get("items") if kind == "array" else None
        if field == ECHO_FIELD or not (
            kind == "string" or (isinstance(items, Mapping) and _kind(items) == "string")
        ):
            continue
        found = _text_values(ctx.results[field], ctx.ok)
        if found is None:
            continue
        strings, owner = found
        hit = _in_phrases(strings, {*phrases, _norm(field)}, pairs)
        if not hit.any():
            continue
        rows = np.zeros(len(ctx.results), dtype=bool)
        rows[owner[hit]] = True
        first = strings[int(np.flatnonzero(hit)[0])].as_py()
        n = int(rows.sum())
        severity = "severe" if n >= 0.5 * scored else "warning"
        message = (
            f"{n} of {scored} answers repeat the prompt or the schema in {field} "
            f"(e.g. {_short(first)})"
        )
        advice = (
            "the model copied its instructions instead of answering: do not use these answers; "
            "try a larger model"
        )
        texts = dict(
            zip(owner[hit].tolist(), strings.filter(pa.array(hit)).to_pylist(), strict=True)
        )
        add(
            "echoed_prompt",
            field,
            severity,
            rows,
            scored,
            message,
            advice,
            lambda i, t=texts: _short(t[i]),
        )


def _out_of_range(ctx: _Context, add: _Add, **_: Any) -> None:
    scored = int(ctx.ok.sum())
    for field, prop in _fields(ctx).items():
        kind = _kind(prop)
        col = ctx.results[field]
        if kind == "number":
            low, high = _bounds(prop)
            if low is None and high is None:
                continue
            x = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            bad = np.zeros(len(x), dtype=bool)
            with np.errstate(invalid="ignore"):
                if low is not None:
                    bad |= x < low[0] if not low[1] else x <= low[0]
                if high is not None:
                    bad |= x > high[0] if not high[1] else x >= high[0]
            span = f"{'' if low is None else low[0]}..{'' if high is None else high[0]}"
            what = f"outside the schema's range {span}"
        elif kind == "enum":
            allowed = set(prop["enum"])
            bad = (col.notna() & ~col.astype(object).isin(allowed)).to_numpy(dtype=bool)
            what = f"not one of the schema's {sorted(map(str, allowed))}"
        else:
            continue
        rows = ctx.ok & bad
        if not rows.any():
            continue
        n = int(rows.sum())
        add(
            "out_of_range",
            field,
            "severe" if n >= 0.5 * scored else "warning",
            rows,
            scored,
            f"{n} of {scored} answers have {field} {what}",
            "the schema did not constrain the answers (strict structured outputs off, or another "
            "schema): treat these values as unchecked",
            lambda i, f=field: _short(ctx.results[f].iloc[i]),
        )


def _bounds(prop: Mapping[str, Any]) -> tuple[tuple[float, bool] | None, tuple[float, bool] | None]:
    """((minimum, exclusive), (maximum, exclusive)), each None when not set."""
    low = high = None
    if isinstance(prop.get("minimum"), (int, float)):
        low = (float(prop["minimum"]), False)
    if isinstance(prop.get("exclusiveMinimum"), (int, float)):
        low = (float(prop["exclusiveMinimum"]), True)
    if isinstance(prop.get("maximum"), (int, float)):
        high = (float(prop["maximum"]), False)
    if isinstance(prop.get("exclusiveMaximum"), (int, float)):
        high = (float(prop["exclusiveMaximum"]), True)
    return low, high


def score_bands(
    levels: list[str], texts: list[str], low: float, high: float
) -> dict[str, tuple[float, float]] | None:
    """Each level's score band: from the prompt ("low below 34, medium 34-66, high above 66"),
    else an even split of [low, high] for a known scale (low/medium/high), else None.

    >>> score_bands(["low", "high"], ["low below 40, high above 40"], 0.0, 100.0)
    {'low': (0.0, 40.0), 'high': (40.0, 100.0)}
    """
    text = "\n".join(texts)
    bands: dict[str, tuple[float, float]] = {}
    for level in levels:
        name = re.escape(level)
        gap = r"\b[^\d;,.\n]{0,20}?"
        if m := re.search(rf"\b{name}{gap}(?:below|under|less than|<)\s*{_NUMBER}", text, re.I):
            bands[level] = (low, float(m.group(1)))
        elif m := re.search(rf"\b{name}{gap}(?:above|over|more than|>)\s*{_NUMBER}", text, re.I):
            bands[level] = (float(m.group(1)), high)
        elif m := re.search(rf"\b{name}{gap}{_NUMBER}\s*(?:-|–|to)\s*{_NUMBER}", text, re.I):
            bands[level] = (float(m.group(1)), float(m.group(2)))
    if len(bands) == len(levels):
        return bands
    lowered = tuple(v.lower() for v in levels)
    for scale in _SCALES:
        if sorted(lowered) == sorted(scale):
            step = (high - low) / len(scale)
            return {
                v: (low + step * scale.index(v.lower()), low + step * (scale.index(v.lower()) + 1))
                for v in levels
            }
    return None


def _level_mismatch(ctx: _Context, add: _Add, **_: Any) -> None:
    fields = _fields(ctx)
    scores = {}
    for f, p in fields.items():
        lower, upper = _bounds(p)
        if _kind(p) == "number" and lower is not None and upper is not None:
            scores[f] = (lower[0], upper[0])
    if not scores:
        return
    scored = int(ctx.ok.sum())
    for field, prop in fields.items():
        if _kind(prop) != "enum" or not all(isinstance(v, str) for v in prop["enum"]):
            continue
        prefix = field.rsplit("_", 1)[0]
        same = [s for s in scores if s.rsplit("_", 1)[0] == prefix]
        score = same[0] if same else next(iter(scores)) if len(scores) == 1 else None
        if score is None:
            continue
        low, high = scores[score]
        bands = score_bands(list(prop["enum"]), ctx.texts, low, high)
        if bands is None:
            continue
        tolerance = 0.05 * (high - low)
        x = pd.to_numeric(ctx.results[score], errors="coerce").to_numpy(
            dtype=float, na_value=np.nan
        )
        x = np.clip(x, low, high)  # a score outside the range is out_of_range's, not this check's
        level = ctx.results[field].astype(object)
        lo = level.map({v: b[0] for v, b in bands.items()}).to_numpy(dtype=float, na_value=np.nan)
        hi = level.map({v: b[1] for v, b in bands.items()}).to_numpy(dtype=float, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            rows = ctx.ok & ((x < lo - tolerance) | (x > hi + tolerance))
        if not rows.any():
            continue
        n = int(rows.sum())
        spans = ", ".join(f"{v} {b[0]:g}-{b[1]:g}" for v, b in bands.items())
        add(
            "level_mismatch",
            field,
            "severe" if n >= 0.5 * scored else "warning",
            rows,
            scored,
            f"{n} of {scored} answers give a {score} that contradicts their {field} ({spans})",
            "the score and the level disagree: read the rationale before trusting either",
            lambda i, s=score, f=field: (
                f"{s} {_plain(ctx.results[s].iloc[i])}, {f} {_plain(ctx.results[f].iloc[i])}"
            ),
        )


def _refusals(ctx: _Context, add: _Add) -> None:
    res = ctx.results
    rows = (
        (res["error_code"] == "refusal").to_numpy(dtype=bool, na_value=False)
        if "error_code" in res.columns
        else np.zeros(len(res), dtype=bool)
    )
    for field, prop in _fields(ctx).items():
        if _kind(prop) != "string" or field == ECHO_FIELD:
            continue
        found = _text_values(res[field], ctx.ok)
        if found is None:
            continue
        strings, owner = found
        match = pc.match_substring_regex(strings, pattern=_REFUSAL, ignore_case=True)
        hit = pc.fill_null(match, False).to_numpy(zero_copy_only=False)
        rows = rows.copy()
        rows[owner[hit]] = True
    if not rows.any():
        return
    n = int(rows.sum())

    def show(i: int) -> str:
        message = res["error_message"].iloc[i] if "error_message" in res.columns else None
        return _short(message if isinstance(message, str) else res["status"].iloc[i])

    add(
        "refusal",
        None,
        "severe" if n >= 0.5 * len(res) else "warning",
        rows,
        len(res),
        f"{n} of {len(res)} requests were refused by the model",
        "read the refusals (error_message or the answer's text); rephrase the prompt or leave "
        "these positions out",
        show,
    )


def _truncated(ctx: _Context, add: _Add) -> None:
    res = ctx.results
    if "finish_reason" not in res.columns:
        return
    rows = res["finish_reason"].isin(_CUT).to_numpy(dtype=bool)
    if not rows.any():
        return
    n = int(rows.sum())
    add(
        "truncated",
        None,
        "severe" if n >= 0.5 * len(res) else "warning",
        rows,
        len(res),
        f"{n} of {len(res)} answers were cut at max_tokens (finish_reason length)",
        "retry_failed(results, requests, max_tokens=800) sends the cut ones again with a higher "
        "limit (CLI: --max-tokens)",
        lambda i: str(res["status"].iloc[i]),
    )
