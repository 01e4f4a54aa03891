"""From a DataFrame to a requests frame: one Batch API request per row, with a stable ``custom_id``.

    >>> import pandas as pd
    >>> portfolio = pd.DataFrame({"ticker": ["NVDA"], "weight": [0.06]})
    >>> requests = build_requests(portfolio)
    >>> requests.index[0]
    'risk-NVDA-...'
    >>> requests.body.iloc[0]["messages"][1]["content"].splitlines()[-1]
    '{"ticker":"NVDA","weight":0.06}'

The frame follows docs/design.md: index ``custom_id``; columns ``custom_id``, ``method``, ``url``,
``body`` (a dict), then the input columns, key first. Every body of one frame shares the same
system-message and ``response_format`` objects (one copy in memory, and ``to_jsonl`` serialises
them once): treat bodies as read-only, ``copy.deepcopy`` one before editing it.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import re
import string
import unicodedata
from collections.abc import Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import orjson
import pandas as pd

from portfolio_batch._contract import NON_DATA_COLUMNS, RESULT_COLUMNS, RETRY_OF
from portfolio_batch.errors import InputError

if TYPE_CHECKING:
    from pydantic import BaseModel

# What schema= takes: a JSON schema dict (or a {"name", "schema", "strict"} wrapper), a pydantic
# model class, or None for RISK_SCHEMA.
SchemaArg = Mapping[str, Any] | type["BaseModel"] | None

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "DEFAULT_USER_PROMPT",
    "ECHO_FIELD",
    "MODEL_FAMILIES",
    "REASONING_EFFORTS",
    "RISK_SCHEMA",
    "SUPPORTED_ENDPOINTS",
    "build_requests",
    "custom_id_for",
    "is_reasoning_model",
    "json_default",
    "retry_of_batches",
]

# Kept short: it is repeated in every line of every batch file, and billed on every request.
DEFAULT_SYSTEM_PROMPT = (
    "You are a portfolio risk analyst. Assess the risk one equity position adds to its portfolio "
    "over the next 12 months, using only the fields given: weight (fraction of the portfolio), "
    "beta, volatility (annualised fraction, 0.35 = 35 %), sector, notes. position_key: the "
    "first field's value, copied exactly; risk_score: 0 (negligible) to 100 (severe); "
    "risk_level: low below 34, medium 34-66, high above 66; drivers: at most 3, short; "
    "rationale: one or two sentences."
)
DEFAULT_USER_PROMPT = "Review the risk of this portfolio position. Its fields, as JSON:"

# The answer's echo of the request's key: aggregate_df compares it with the key it sent, so an
# answer mapped to the wrong request (a provider bug, a mixed-up file) is caught, not trusted.
# Not "ticker": build_requests refuses schema fields named like input columns.
ECHO_FIELD = "position_key"
RISK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        ECHO_FIELD: {
            "type": "string",
            "description": "The first field's value, copied exactly",
        },
        "risk_score": {"type": "integer", "minimum": 0, "maximum": 100},
        "risk_level": {"type": "string", "enum": ["low", "medium", "high"]},
        "drivers": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "rationale": {"type": "string"},
    },
    "required": [ECHO_FIELD, "risk_score", "risk_level", "drivers", "rationale"],
    "additionalProperties": False,
}
_RISK_SCHEMA_NAME = "position_risk"

# OpenAI needs the /v1 prefix; Azure OpenAI's batch files use the bare path.
SUPPORTED_ENDPOINTS = ("/v1/chat/completions", "/chat/completions")

# Model families by name prefix (after any "openai/"), the longest matching prefix wins.
# reasoning=True: the model thinks before answering, so on chat completions it takes
# max_completion_tokens (it refuses max_tokens with a 400 on every line: "Use
# 'max_completion_tokens' instead", openai-python #2046) and reasoning_effort, and its reasoning
# tokens are billed as output. Add your own names, e.g. an Azure deployment of o4-mini:
# ``pb.MODEL_FAMILIES["my-o4-deployment"] = True``, or pass ``reasoning=True`` to build_requests.
MODEL_FAMILIES: dict[str, bool] = {
    "o1": True,
    "o3": True,
    "o4": True,
    "gpt-5": True,
    "gpt-4": False,
    "gpt-3.5": False,
}
# The chat-completions reasoning_effort values (OpenAI's ReasoningEffort; not every model takes
# every one: "none" is gpt-5.1 and later, "minimal" the gpt-5 family).
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


def is_reasoning_model(model: str) -> bool:
    """Whether ``model`` is a reasoning model per :data:`MODEL_FAMILIES` (prefix match at a
    ``-``/``.``/``_`` boundary; unknown names are not).

        >>> is_reasoning_model("gpt-5-mini"), is_reasoning_model("o3"), is_reasoning_model("gpt-4o-mini")
        (True, True, False)
    """
    name = model.removeprefix("openai/")
    best = ""
    for prefix in MODEL_FAMILIES:
        if (
            name.startswith(prefix)
            and (len(name) == len(prefix) or name[len(prefix)] in "-._")
            and len(prefix) > len(best)
        ):
            best = prefix
    return bool(MODEL_FAMILIES.get(best, False))


# custom_ids follow the strictest provider rule, Anthropic's ^[A-Za-z0-9_-]{1,64}$ (every other
# backend takes those ids too). "-" separates the id's parts, so no part may contain one.
_ID_PART = re.compile(r"[A-Za-z0-9_]+")
_MAX_ID = 64
_ID_HASH = 16  # hex digits of sha256(key): 64 bits, ~3e-8 chance of any clash among 1M keys
_MAX_ID_PREFIX = 20  # leaves a hashed id >= 17 readable characters of its key
_NOT_ID_CHAR = re.compile(r"[^A-Za-z0-9_]")
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def json_default(value: Any) -> Any:
    """orjson's ``default=`` for the pandas / numpy / stdlib scalars found in a row (``to_jsonl``
    serialises with it too).

    >>> orjson.dumps({"when": pd.Timestamp("2026-01-02")}, default=json_default)
    b'{"when":"2026-01-02T00:00:00"}'
    """
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, pd.Timedelta):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@contextmanager
def gc_paused() -> Iterator[None]:
    """Creating many small objects that form no cycles (a million request bodies, the rows of
    a results file) triggers the cyclic GC over and over, each time scanning the whole growing
    heap: pause it while they are built."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def custom_id_for(key_value: Any, prompt_version: str, *, prefix: str = "risk") -> str:
    """The ``custom_id`` of a row; it matches ``^[A-Za-z0-9_-]{1,64}$`` (Anthropic's rule, the
    strictest of every backend's), whatever the key.

    - a key of letters, digits and ``_`` that fits is kept: ``{prefix}-{key}-{prompt_version}``;
    - any other key (a ``.``, ``/``, ``-``, space or non-ASCII character, or too long) becomes
      ``{prefix}-{readable}-{hash}-{prompt_version}``: ``readable`` is the key with accents
      dropped and every other character outside ``A-Z a-z 0-9 _`` turned into ``_``, cut to
      fit; ``hash`` is 16 hex digits of the SHA-256 of the exact key (UTF-8).

        >>> custom_id_for("AAPL", "3f9a1c2e")
        'risk-AAPL-3f9a1c2e'
        >>> custom_id_for("BRK.B", "3f9a1c2e")
        'risk-BRK_B-0907abf5bc1da7c7-3f9a1c2e'

    Distinct keys give distinct ids: a kept id has three ``-``-separated parts and a hashed one
    four (prefix, prompt_version and the readable part never hold a ``-``), so the two forms never
    meet, and two hashed ids are equal only if 64-bit hashes collide (``build_requests`` refuses
    the frame then, naming both rows). Nothing parses an id back into its key: results join by the
    whole ``custom_id`` (the requests frame's index). ``prompt_version`` (the run hash) is
    always the LAST ``-`` part: recovery without a registry (``Backend.discover``) and reports
    read it from there. Ids made before this rule (``risk-BRK.B-...``, ``risk-BRK%2FB-...``)
    stay valid for the requests frames that hold them.
    """
    if not (_ID_PART.fullmatch(prefix) and _ID_PART.fullmatch(prompt_version)):
        raise InputError(
            f"custom_id_for(prefix={prefix!r}, prompt_version={prompt_version!r}): both may only "
            "use letters, digits and '_'"
        )
    text = str(key_value)
    room = _MAX_ID - len(prefix) - len(prompt_version) - 2
    if len(text) <= room and _ID_PART.fullmatch(text):
        return f"{prefix}-{text}-{prompt_version}"
    room -= _ID_HASH + 1
    if room < 1:
        raise InputError(
            f"custom_id_for: prefix {prefix!r} and prompt_version {prompt_version!r} leave no room "
            f"for the key in a {_MAX_ID}-character custom_id; shorten the prefix"
        )
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_ID_HASH]
    return f"{prefix}-{_readable(text)[:room]}-{digest}-{prompt_version}"


def _readable(text: str) -> str:
    """``text`` in id characters: accents dropped (``Ž`` -> ``Z``), anything else not in
    ``A-Z a-z 0-9 _`` -> ``_``."""
    if not text.isascii():
        decomposed = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NOT_ID_CHAR.sub("_", text) or "_"


def retry_of_batches(frame: pd.DataFrame) -> list[str]:
    """The batch ids in a requests frame's or manifest's ``retry_of`` column (none without one).

    >>> retry_of_batches(pd.DataFrame({"retry_of": ["batch_a,batch_b", None, "batch_a"]}))
    ['batch_a', 'batch_b']
    """
    if RETRY_OF not in frame.columns:
        return []
    ids: set[str] = set()
    for value in frame[RETRY_OF].dropna().unique().tolist():
        ids.update(b for b in str(value).split(",") if b)
    return sorted(ids)


def schema_from(schema: SchemaArg) -> tuple[str, dict[str, Any]]:
    """(name, JSON schema dict) from None, a pydantic model class, a json_schema wrapper or a dict."""
    if schema is None:
        return _RISK_SCHEMA_NAME, RISK_SCHEMA
    if isinstance(schema, type):
        from pydantic import BaseModel

        if issubclass(schema, BaseModel):
            from openai.lib._pydantic import to_strict_json_schema

            return schema.__name__, to_strict_json_schema(schema)
    if not isinstance(schema, Mapping):
        raise InputError(
            f"schema= must be a JSON schema dict or a pydantic model class, got {type(schema).__name__}; "
            "pass e.g. schema=MyAnswer (a pydantic.BaseModel subclass) or schema={'type': 'object', ...}"
        )
    if "schema" in schema and "type" not in schema:  # {"name", "schema", "strict"}: json_schema
        name = str(schema.get("name") or "response")
        return name, dict(schema["schema"])
    name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title") or "response"))[:64]
    return name, dict(schema)


def _check_strict(node: Any, path: str) -> None:
    """Strict structured outputs reject objects with optional or extra properties: catch that
    here, before a whole batch fails with 400s."""
    if not isinstance(node, Mapping):
        return
    if node.get("type") == "object" or "properties" in node:
        props = node.get("properties") or {}
        if node.get("additionalProperties", True) is not False:
            raise InputError(
                f"schema at {path}: strict structured outputs need "
                '"additionalProperties": false on every object; add it to that object'
            )
        missing = [p for p in props if p not in (node.get("required") or [])]
        if missing:
            raise InputError(
                f"schema at {path}: strict structured outputs need every property in 'required'; "
                f"add {missing} to its 'required' list (make a field optional with a null type: "
                '"type": ["string", "null"])'
            )
        for prop, sub in props.items():
            _check_strict(sub, f"{path}.properties.{prop}")
    for word in ("items", "additionalProperties", "not"):
        if isinstance(node.get(word), Mapping):
            _check_strict(node[word], f"{path}.{word}")
    for word in ("anyOf", "allOf", "oneOf", "prefixItems"):
        for i, sub in enumerate(node.get(word) or []):
            _check_strict(sub, f"{path}.{word}[{i}]")
    for word in ("$defs", "definitions"):
        for name, sub in (node.get(word) or {}).items():
            _check_strict(sub, f"{path}.{word}.{name}")


def _prompts(prompt: Any) -> tuple[str, str]:
    if prompt is None:
        return DEFAULT_SYSTEM_PROMPT, DEFAULT_USER_PROMPT
    if isinstance(prompt, str):
        return prompt, DEFAULT_USER_PROMPT
    if isinstance(prompt, Mapping) and set(prompt) <= {"system", "user"}:
        return str(prompt.get("system", DEFAULT_SYSTEM_PROMPT)), str(
            prompt.get("user", DEFAULT_USER_PROMPT)
        )
    raise InputError(
        "prompt= must be a string (the system prompt) or a dict with 'system' and/or 'user' "
        "(a template such as 'Review {name} ({ticker}).'); "
        f"got {type(prompt).__name__}{' with keys ' + str(sorted(prompt)) if isinstance(prompt, Mapping) else ''}"
    )


_ROW_OFFSET = "_pb_row_offset"


def _row_label(df: pd.DataFrame, pos: int) -> str:
    label = df.index[pos]
    if isinstance(label, np.generic):
        label = label.item()
    return f"row {pos + df.attrs.get(_ROW_OFFSET, 0)} (index {label!r})"


def _fragments(df: pd.DataFrame, column: Any, lead: str = ",") -> list[str]:
    """``,"column":value`` for each row, or ``""`` where the value is missing (NaN/None/NA/NaT);
    ``lead`` instead of the comma (the first column's carries the text before the JSON object)."""
    series = df[column]
    head = lead + orjson.dumps(str(column)).decode() + ":"
    if _mostly_repeated(series):
        fanned = _fanned_out(series, column, lead)
        if fanned is not None:
            return fanned
    missing = series.isna().to_numpy()
    dtype = series.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "biuf":
        return _number_fragments(df, column, head, missing)
    if _arrow_text_needing_no_escape(series):
        # orjson would write '"' + value + '"' for each: skip ~1M calls
        texts = series.tolist()
        quoted = head + '"'
        if missing.any():
            return [
                "" if m else f'{quoted}{t}"' for t, m in zip(texts, missing.tolist(), strict=True)
            ]
        return [f'{quoted}{t}"' for t in texts]
    return _json_fragments(df, column, head, missing)


def _fanned_out(series: pd.Series, column: Any, lead: str) -> list[str] | None:
    """Sectors, names, betas: serialise each distinct value once, then fan out by code (None
    when a value cannot be serialised: the row-by-row path names its row)."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    if isinstance(uniques, pd.Categorical):
        uniques = np.asarray(uniques, dtype=object)
    try:
        distinct = _fragments(pd.DataFrame({column: pd.Series(uniques)}), column, lead)
    except InputError:
        return None
    table = np.asarray([*distinct, ""], dtype=object)  # code -1 (missing) -> ""
    fragments: list[str] = table[codes].tolist()
    return fragments


def _number_fragments(df: pd.DataFrame, column: Any, head: str, missing: np.ndarray) -> list[str]:
    values = np.ascontiguousarray(
        df[column].to_numpy()
    )  # orjson refuses strided views (df.iloc[::-1])
    if values.dtype.kind == "f" and np.isinf(values).any():
        pos = int(np.flatnonzero(np.isinf(values))[0])
        raise InputError(
            f"{_row_label(df, pos)}, column {column!r}: {values[pos]} is not valid JSON; "
            "replace infinite values (e.g. df.replace([np.inf, -np.inf], np.nan))"
        )
    if not len(values):
        return []
    # One orjson call per column; numbers contain no commas, so splitting is exact.
    texts = orjson.dumps(values, option=_DUMPS_OPTIONS)[1:-1].decode().split(",")
    if missing.any():
        return [("" if m else head + t) for t, m in zip(texts, missing.tolist(), strict=True)]
    return [head + t for t in texts]


def _json_fragments(df: pd.DataFrame, column: Any, head: str, missing: np.ndarray) -> list[str]:
    values = df[column].to_numpy(dtype=object)
    dumps = orjson.dumps
    try:
        if not missing.any():
            return [
                head + dumps(v, default=json_default, option=_DUMPS_OPTIONS).decode()
                for v in values
            ]
        return [
            "" if m else head + dumps(v, default=json_default, option=_DUMPS_OPTIONS).decode()
            for v, m in zip(values, missing.tolist(), strict=True)
        ]
    except TypeError:
        pass
    for pos, value in enumerate(values):  # find the row to name in the error
        try:
            dumps(value, default=json_default, option=_DUMPS_OPTIONS)
        except TypeError as exc:
            raise InputError(
                f"{_row_label(df, pos)}, column {column!r}: {type(value).__name__} value {value!r} "
                f"cannot be written as JSON ({exc}); convert the column to str or a number first"
            ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _arrow_text_needing_no_escape(series: pd.Series) -> bool:
    """Whether a pyarrow string column holds nothing JSON escapes (``"``, ``\\``, U+0000-U+001F),
    checked in one vectorised regex. Pyarrow strings are valid UTF-8, so no lone surrogates."""
    dtype = series.dtype
    if not (isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow"):
        return False
    return not bool(series.str.contains(r'[\x00-\x1f"\\]', regex=True, na=False).any())


def _mostly_repeated(series: pd.Series) -> bool:
    """Whether a column repeats its values enough for factorize to pay (judged on a sample)."""
    if len(series) < 1000:
        return False
    try:
        return int(series.iloc[:1000].nunique(dropna=True)) < 500
    except TypeError:  # unhashable values (lists, dicts)
        return False


def _key_strings(df: pd.DataFrame, key: Any) -> list[str]:
    series = df[key]
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        texts = series.to_numpy(dtype=object, na_value="").tolist()
        keys = [t.strip() if isinstance(t, str) else str(t).strip() for t in texts]
    else:
        missing = series.isna().to_numpy()
        keys = ["" if m else str(v).strip() for v, m in zip(series.tolist(), missing, strict=True)]
    if not all(keys):
        pos = keys.index("")
        raise InputError(
            f"{_row_label(df, pos)}: the key column {key!r} is empty; every row needs a "
            f"unique, non-empty {key!r} (drop the row or fill in its {key})"
        )
    return keys


def _plain_key(room: int) -> str:
    """The regex of a key kept as it is in its custom_id (at most ``room`` characters)."""
    return f"[A-Za-z0-9_]{{1,{room}}}"


def _plain_arrow_keys(series: pd.Series, room: int) -> bool:
    """Whether every key of a pyarrow string column is already a plain id part (one vectorised
    regex, no NA): then the keys need no strip and no hashing."""
    dtype = series.dtype
    if not (isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow") or series.empty:
        return False
    return bool(series.str.fullmatch(_plain_key(room)).all()) and not series.isna().any()


def _all_plain(joined: str, n: int, room: int) -> bool:
    """Whether all ``n`` keys joined by newlines are plain: one regex over all of them at once."""
    plain = re.compile(rf"(?m)^{_plain_key(room)}$")
    return joined.count("\n") == n - 1 and len(plain.findall(joined)) == n


@overload
def build_requests(
    df: pd.DataFrame,
    *,
    model: str = ...,
    prompt: str | Mapping[str, str] | None = ...,
    schema: SchemaArg = ...,
    key: str = ...,
    max_tokens: int = ...,
    reasoning_effort: str | None = ...,
    reasoning: bool | None = ...,
    endpoint: str = ...,
    id_prefix: str = ...,
    chunksize: None = ...,
) -> pd.DataFrame: ...


@overload
def build_requests(
    df: pd.DataFrame,
    *,
    model: str = ...,
    prompt: str | Mapping[str, str] | None = ...,
    schema: SchemaArg = ...,
    key: str = ...,
    max_tokens: int = ...,
    reasoning_effort: str | None = ...,
    reasoning: bool | None = ...,
    endpoint: str = ...,
    id_prefix: str = ...,
    chunksize: int,
) -> Iterator[pd.DataFrame]: ...


def build_requests(
    df: pd.DataFrame,
    *,
    model: str = "gpt-4o-mini",
    prompt: str | Mapping[str, str] | None = None,
    schema: SchemaArg = None,
    key: str = "ticker",
    max_tokens: int = 400,
    reasoning_effort: str | None = None,
    reasoning: bool | None = None,
    endpoint: str = "/v1/chat/completions",
    id_prefix: str = "risk",
    chunksize: int | None = None,
) -> pd.DataFrame | Iterator[pd.DataFrame]:
    """One chat-completions request per row of ``df``, indexed by a stable ``custom_id``.

    ``prompt``: the system prompt as a string, or ``{"system": ..., "user": ...}`` where ``user``
    is a template filled from the row (``"Review {name} ({ticker})."``). The row's fields are
    always appended as the user message's last line, as one compact JSON object (column order,
    key first, missing values dropped). ``schema``: a JSON schema dict or a pydantic model class
    for strict structured output (default :data:`RISK_SCHEMA`). ``endpoint``: ``/v1/chat/completions``
    for OpenAI, ``/chat/completions`` for Azure (with your deployment name as ``model``).

        >>> requests = build_requests(pd.DataFrame({"ticker": ["AAPL"], "weight": [0.5]}))
        >>> list(requests.columns)
        ['custom_id', 'method', 'url', 'body', 'ticker', 'weight']

    Reasoning models (o-series, gpt-5: :data:`MODEL_FAMILIES`, or ``reasoning=True`` for a name
    the table does not know) get ``max_completion_tokens`` instead of ``max_tokens``; it bounds
    the reasoning tokens and the answer together, so leave room for both. ``reasoning_effort``
    (``"minimal"``, ``"low"``, ``"medium"``, ``"high"``, ...) is sent as given; None leaves the
    model's default.

        >>> body = build_requests(pd.DataFrame({"ticker": ["AAPL"]}), model="gpt-5-mini",
        ...                       max_tokens=2000, reasoning_effort="low").body.iloc[0]
        >>> body["max_completion_tokens"], body["reasoning_effort"], "max_tokens" in body
        (2000, 'low', False)

    ``custom_id`` = ``{id_prefix}-{key}-{prompt_version}``, where ``prompt_version`` is a short hash
    of prompt, schema and model: the same row gets the same id whatever its position. A key that
    is not all letters, digits and ``_`` (``BRK.B``) or is long gets a hash of itself too
    (:func:`custom_id_for`), so every id fits every provider's ``^[A-Za-z0-9_-]{1,64}$``.

    ``chunksize=N`` returns an iterator of requests frames of ``N`` rows each instead, for
    :func:`~portfolio_batch.to_jsonl`, so that a million positions never exist as request bodies
    all at once (a whole frame holds a dict per body, about 1 GB at that size). Bad options and
    columns are refused at the call; a bad value or key further down when its chunk is built,
    naming its row of ``df``, and a key repeated across chunks by ``to_jsonl``:

        >>> manifest = to_jsonl(build_requests(big, chunksize=50_000), "out/")  # doctest: +SKIP
    """
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"build_requests() takes a DataFrame first, got {type(df).__name__}")
    if chunksize is not None:
        return _build_in_chunks(
            df,
            chunksize,
            model=model,
            prompt=prompt,
            schema=schema,
            key=key,
            max_tokens=max_tokens,
            reasoning_effort=reasoning_effort,
            reasoning=reasoning,
            endpoint=endpoint,
            id_prefix=id_prefix,
        )
    return _prepare(
        df,
        model=model,
        prompt=prompt,
        schema=schema,
        key=key,
        max_tokens=max_tokens,
        reasoning_effort=reasoning_effort,
        reasoning=reasoning,
        endpoint=endpoint,
        id_prefix=id_prefix,
    ).frame()


def _prepare(
    df: pd.DataFrame,
    *,
    model: str,
    prompt: str | Mapping[str, str] | None,
    schema: SchemaArg,
    key: str,
    max_tokens: int,
    reasoning_effort: str | None,
    reasoning: bool | None,
    endpoint: str,
    id_prefix: str,
) -> PreparedRequests:
    """Everything :func:`build_requests` does but make the bodies (options checked, custom_ids,
    user messages)."""
    _check_options(model=model, max_tokens=max_tokens, endpoint=endpoint)
    thinks = _reasoning(model, reasoning, reasoning_effort)
    _check_columns(df, key=key, id_prefix=id_prefix)
    system_prompt, user_prompt = _prompts(prompt)
    schema_name, schema_dict, strict = _checked_schema(df, schema)
    placeholders = _placeholders(df, user_prompt)

    json_schema = {"name": schema_name, "strict": strict, "schema": schema_dict}
    version_src = [system_prompt, user_prompt, json_schema, model]
    prompt_version = hashlib.sha256(
        orjson.dumps(version_src, option=orjson.OPT_SORT_KEYS)
    ).hexdigest()[:8]
    ids = _custom_ids(df, key, id_prefix, prompt_version)
    contents = _contents(df, key, user_prompt, placeholders)

    limit = int(max_tokens)
    return PreparedRequests(
        df=df,
        ids=ids,
        contents=contents,
        # One shared system message and response_format for every body (see module docstring).
        body_options={
            "model": model,
            "system_message": {"role": "system", "content": system_prompt},
            "response_format": {"type": "json_schema", "json_schema": json_schema},
            "limit": limit,
            "thinks": thinks,
            "reasoning_effort": reasoning_effort,
        },
        attrs={
            "model": model,
            "endpoint": endpoint,
            "key": key,
            "prompt_version": prompt_version,
            "schema": schema_dict,
            "max_tokens": limit,
            "reasoning": thinks,
            "reasoning_effort": reasoning_effort,
        },
    )


@dataclass
class PreparedRequests:
    """A requests frame before its bodies exist: its custom_ids and user messages. ``frame()``
    makes it; ``to_jsonl`` writes the lines of the chunks a :class:`RequestChunks` hands it
    straight from these, without a dict per body (no other code can see those chunks)."""

    df: pd.DataFrame
    ids: list[str]
    contents: list[str]
    body_options: dict[str, Any]
    attrs: dict[Hashable, Any]

    def bodies(self, contents: list[str]) -> list[dict[str, Any]]:
        """The bodies of ``contents`` (some or all of this chunk's user messages)."""
        return _bodies(contents, **self.body_options)

    def frame(self) -> pd.DataFrame:
        out = _requests_frame(
            self.df,
            self.attrs["key"],
            self.ids,
            self.bodies(self.contents),
            self.attrs["endpoint"],
        )
        out.attrs = dict(self.attrs)  # replaced, not merged: nothing of df's attrs
        return out


def _check_options(*, model: str, max_tokens: int, endpoint: str) -> None:
    if endpoint not in SUPPORTED_ENDPOINTS:
        raise InputError(
            f"endpoint={endpoint!r} is not supported; use '/v1/chat/completions' (OpenAI) or "
            "'/chat/completions' (Azure OpenAI, with your deployment name as model=)"
        )
    if not isinstance(model, str) or not model.strip():
        raise InputError("model= must be a non-empty model name (or an Azure deployment name)")
    if (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, (int, np.integer))
        or max_tokens < 1
    ):
        raise InputError(
            f"max_tokens={max_tokens!r} must be a positive integer, e.g. max_tokens=400"
        )


def _check_columns(df: pd.DataFrame, *, key: str, id_prefix: str) -> None:
    if not re.fullmatch(rf"[A-Za-z0-9_]{{1,{_MAX_ID_PREFIX}}}", id_prefix):
        raise InputError(
            f"id_prefix={id_prefix!r} may only use letters, digits and '_', at most "
            f"{_MAX_ID_PREFIX} of them (custom_ids must match ^[A-Za-z0-9_-]{{1,64}}$ on every "
            "provider); e.g. id_prefix='risk_v2'"
        )
    if key not in df.columns:
        hint = " It is the index: pass df.reset_index()." if key in (df.index.names or []) else ""
        raise InputError(
            f"The key column {key!r} is missing; the frame has columns {list(map(str, df.columns))}. "
            f"Pass key='<your id column>'.{hint}"
        )
    clash = [c for c in df.columns if c in NON_DATA_COLUMNS]
    if clash:
        raise InputError(
            f"Input column(s) {clash} clash with the requests frame's own columns {list(NON_DATA_COLUMNS)}; "
            "rename them first, e.g. df.rename(columns={'url': 'source_url'})"
        )
    if df.columns.duplicated().any():
        raise InputError(
            f"Duplicate column names {sorted(set(map(str, df.columns[df.columns.duplicated()])))}; "
            "rename them so each column has one name"
        )


def _checked_schema(df: pd.DataFrame, schema: SchemaArg) -> tuple[str, dict[str, Any], bool]:
    """(name, a copy of the JSON schema, strict) for ``schema=``, refused up front if it is not a
    valid (strict) schema or an answer field has the name of an input column."""
    schema_name, schema_dict = schema_from(schema)
    answer_fields = list((schema_dict or {}).get("properties") or {})
    taken = [c for c in df.columns if c in RESULT_COLUMNS or c in answer_fields]
    if taken:
        raise InputError(
            f"Input column(s) {taken} have the name of a results column (the answer's fields "
            f"{answer_fields} or {list(RESULT_COLUMNS)}), so the results could not hold both; "
            f"rename them first, e.g. df.rename(columns={{{taken[0]!r}: 'input_{taken[0]}'}})"
        )
    schema_dict = copy.deepcopy(schema_dict)  # bodies and attrs must not alias RISK_SCHEMA / yours
    strict = not (
        isinstance(schema, Mapping) and schema.get("strict") is False and "schema" in schema
    )
    if schema is not None:  # jsonschema takes ~1 s to import: only for a user's own schema
        from jsonschema.exceptions import SchemaError
        from jsonschema.validators import validator_for

        try:
            validator_for(schema_dict).check_schema(schema_dict)
        except SchemaError as exc:
            raise InputError(
                f"schema= is not a valid JSON schema: {exc.message} (at {exc.json_path}); fix that keyword"
            ) from None
    if strict:
        _check_strict(schema_dict, "$")
    return schema_name, schema_dict, strict


def _placeholders(df: pd.DataFrame, user_prompt: str) -> list[str]:
    """The columns the user template names (``{ticker}``), each checked to exist."""
    placeholders = [f for _, f, _, _ in string.Formatter().parse(user_prompt) if f]
    unknown = [f for f in placeholders if f not in df.columns]
    if unknown:
        raise InputError(
            f"The user prompt template uses {{{unknown[0]}}}, which is not a column; "
            f"columns are {list(map(str, df.columns))} (write literal braces as '{{{{' and '}}}}')"
        )
    return placeholders


def _custom_ids(df: pd.DataFrame, key: str, id_prefix: str, prompt_version: str) -> list[str]:
    """Each row's ``custom_id`` (see :func:`custom_id_for`), refused if two rows share one."""
    room = _MAX_ID - len(id_prefix) - len(prompt_version) - 2
    if _plain_arrow_keys(df[key], room):  # the common case, checked in C: no strip, no hash
        keys = df[key].tolist()
        ids = [f"{id_prefix}-{k}-{prompt_version}" for k in keys]
    elif (keys := _key_strings(df, key)) and _all_plain("\n".join(keys), len(keys), room):
        ids = [f"{id_prefix}-{k}-{prompt_version}" for k in keys]
    else:
        plain = _ID_PART.fullmatch
        ids = [
            f"{id_prefix}-{k}-{prompt_version}"
            if len(k) <= room and plain(k)
            else custom_id_for(k, prompt_version, prefix=id_prefix)
            for k in keys
        ]
    if len(set(ids)) != len(ids):
        seen: dict[str, int] = {}
        for pos, cid in enumerate(ids):
            first = seen.setdefault(cid, pos)
            if first != pos:
                same = (
                    f"have the same key {keys[pos]!r}"
                    if keys[first] == keys[pos]
                    else f"have keys {keys[first]!r} and {keys[pos]!r} whose hashes collide"
                )
                raise InputError(
                    f"{_row_label(df, first)} and {_row_label(df, pos)} {same} in column "
                    f"{key!r} (custom_id {cid!r}); keys must be unique: drop or merge the "
                    "duplicate rows (or rename one of two colliding keys)"
                )
    return ids


def _contents(df: pd.DataFrame, key: str, user_prompt: str, placeholders: list[str]) -> list[str]:
    """Each row's user message: the (filled) user prompt, then the row as one JSON object, key
    first, missing values dropped."""
    others = [_fragments(df, c) for c in df.columns if c != key]
    # The key's fragment carries the text before it instead of a comma, and "}" closes the
    # object: one C-level join per row, no slicing.
    if placeholders:
        filled = _fill_template(df, user_prompt, placeholders)
        rows = zip(filled, repeat("\n{"), _fragments(df, key, lead=""), *others, repeat("}"))
    else:
        rows = zip(_fragments(df, key, lead=user_prompt + "\n{"), *others, repeat("}"))
    return list(map("".join, rows))


def _bodies(
    contents: list[str],
    *,
    model: str,
    system_message: dict[str, str],
    response_format: dict[str, Any],
    limit: int,
    thinks: bool,
    reasoning_effort: str | None,
) -> list[dict[str, Any]]:
    """One body per user message; every body shares ``system_message`` and ``response_format``."""
    with gc_paused():
        bodies = _body_list(
            contents,
            model=model,
            system_message=system_message,
            response_format=response_format,
            limit=limit,
            thinks=thinks,
            reasoning_effort=reasoning_effort,
        )
        if len(bodies) > 10_000:
            # They form no cycles, yet the next young collection would walk every one of them
            # (~0.3 s a million rows): file them, with every other live object, in the oldest
            # generation (gc.unfreeze puts the frozen objects there) instead.
            gc.freeze()
            gc.unfreeze()
    return bodies


def _body_list(
    contents: list[str],
    *,
    model: str,
    system_message: dict[str, str],
    response_format: dict[str, Any],
    limit: int,
    thinks: bool,
    reasoning_effort: str | None,
) -> list[dict[str, Any]]:
    if not thinks:
        return [
            {
                "model": model,
                "messages": [system_message, {"role": "user", "content": content}],
                "max_tokens": limit,
                "response_format": response_format,
            }
            for content in contents
        ]
    if reasoning_effort is None:
        return [
            {
                "model": model,
                "messages": [system_message, {"role": "user", "content": content}],
                "max_completion_tokens": limit,
                "response_format": response_format,
            }
            for content in contents
        ]
    return [
        {
            "model": model,
            "messages": [system_message, {"role": "user", "content": content}],
            "max_completion_tokens": limit,
            "reasoning_effort": reasoning_effort,
            "response_format": response_format,
        }
        for content in contents
    ]


def _requests_frame(
    df: pd.DataFrame, key: str, ids: list[str], bodies: list[dict[str, Any]], endpoint: str
) -> pd.DataFrame:
    """The requests frame: index ``custom_id``; custom_id, method, url, body, the input columns
    (key first)."""
    index = pd.Index(ids, name="custom_id", dtype=object)
    frame: dict[Any, Any] = {
        "custom_id": pd.Series(ids, index=index, dtype=object),
        "method": pd.Series(["POST"] * len(ids), index=index, dtype=object),
        "url": pd.Series([endpoint] * len(ids), index=index, dtype=object),
        "body": pd.Series(bodies, index=index, dtype=object),
    }
    for column in [key, *[c for c in df.columns if c != key]]:
        frame[column] = df[column].set_axis(index)  # copy-on-write: the caller's frame is untouched
    # copy=False: no copy of a million object pointers (copy-on-write keeps the frames apart)
    return pd.DataFrame(frame, index=index, copy=False)


def _reasoning(model: str, reasoning: bool | None, effort: str | None) -> bool:
    """Whether the bodies are a reasoning model's (``reasoning`` overrides the family table);
    checks ``reasoning_effort`` against it."""
    if reasoning is not None and not isinstance(reasoning, bool):
        raise InputError(f"reasoning={reasoning!r} must be True, False or None (look it up)")
    thinks = is_reasoning_model(model) if reasoning is None else reasoning
    if effort is None:
        return thinks
    if effort not in REASONING_EFFORTS:
        raise InputError(
            f"reasoning_effort={effort!r} is not one of {list(REASONING_EFFORTS)}; "
            "e.g. reasoning_effort='low'"
        )
    if not thinks:
        raise InputError(
            f"reasoning_effort={effort!r} is for reasoning models (o-series, gpt-5), and "
            f"{model!r} is not one (pb.MODEL_FAMILIES); drop reasoning_effort, or pass "
            "reasoning=True if it is a deployment of a reasoning model"
        )
    return thinks


def _build_in_chunks(df: pd.DataFrame, chunksize: int, **options: Any) -> Iterator[pd.DataFrame]:
    if isinstance(chunksize, bool) or not isinstance(chunksize, (int, np.integer)) or chunksize < 1:
        raise InputError(f"chunksize={chunksize!r} must be a positive integer, e.g. 50_000")
    return RequestChunks(df, int(chunksize), options)


def _part(df: pd.DataFrame, start: int, size: int) -> pd.DataFrame:
    part = df.iloc[start : start + size]
    # A slice's positions start at 0 again: errors must name the row of the user's frame.
    part.attrs = {**part.attrs, _ROW_OFFSET: start}
    return part


class RequestChunks(Iterator[pd.DataFrame]):
    """``build_requests(df, chunksize=N)``: the requests frames of ``N`` rows each, each built when
    it is asked for. ``to_jsonl`` takes the chunks not built yet as :class:`PreparedRequests`
    (:meth:`prepared`), so that their bodies never exist as dicts."""

    def __init__(self, df: pd.DataFrame, chunksize: int, options: dict[str, Any]) -> None:
        self._df, self._options = df, options
        # The first chunk is built now, so that bad options and columns are refused at the call;
        # popped, not kept: the iterator must not hold one chunk while the next is built.
        self._first: list[pd.DataFrame] = [build_requests(_part(df, 0, chunksize), **options)]
        self._starts = iter(range(chunksize, len(df), chunksize))
        self._chunksize = chunksize

    def __next__(self) -> pd.DataFrame:
        if self._first:
            return self._first.pop()
        start = next(self._starts)
        built: pd.DataFrame = build_requests(
            _part(self._df, start, self._chunksize), **self._options
        )
        return built

    def prepared(self) -> Iterator[pd.DataFrame | PreparedRequests]:
        """The chunks left: the one built at the call as a frame, the others prepared."""
        if self._first:
            yield self._first.pop()
        for start in self._starts:
            yield _prepare(_part(self._df, start, self._chunksize), **self._options)


def _fill_template(df: pd.DataFrame, template: str, fields: list[str]) -> list[str]:
    """The user template filled from each row (missing values as empty strings)."""
    cols = {}
    for f in dict.fromkeys(fields):
        series = df[f]
        values = series.astype(object).where(series.notna(), "")
        cols[f] = values.tolist()
    names = list(cols)
    return [
        template.format_map(dict(zip(names, row, strict=True)))
        for row in zip(*cols.values(), strict=True)
    ]
