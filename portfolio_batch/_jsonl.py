"""Write a requests frame as sharded, byte-deterministic Batch API input files; read JSONL back.

    >>> manifest = to_jsonl(requests, "out/")                         # doctest: +SKIP
    >>> manifest[["shard", "path", "n_requests", "sha256"]]          # doctest: +SKIP

Each line is ``{"custom_id","method","url","body"}`` in that order, compact (no spaces), UTF-8,
keys never sorted: inside ``body`` the order is the dict's own (for ``build_requests``: ``model``,
``messages``, ``max_tokens``, ``response_format``), because in a strict JSON schema the property
order is the order the model writes its answer in. So the same requests frame and options always
give the same bytes and ``sha256``, on any machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from itertools import repeat
from operator import is_, itemgetter
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import orjson
import pandas as pd

from portfolio_batch._contract import MANIFEST_COLUMNS
from portfolio_batch._home import writable_dir
from portfolio_batch._providers.openai import MAX_BYTES, MAX_REQUESTS  # OpenAI's, per file
from portfolio_batch._requests import (
    PreparedRequests,
    RequestChunks,
    json_default,
    retry_of_batches,
)
from portfolio_batch.errors import InputError

__all__ = ["iter_jsonl", "to_jsonl"]

_CHUNK = 2048  # rows serialised per write: bounds memory to a few MB whatever the frame's size
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_CHAT_KEYS = ("model", "messages", "max_tokens", "response_format")


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=json_default, option=_OPTIONS)


def _bad_field(value: Any, path: str) -> tuple[str, str] | None:
    """The first (path, type name) inside ``value`` that orjson cannot serialise."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"{path}[{k!r}] (key)", type(k).__name__
            found = _bad_field(v, f"{path}.{k}" if path else k)
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _bad_field(v, f"{path}[{i}]")
            if found:
                return found
        return None
    try:
        _dumps(value)
    except TypeError:
        return path or "body", type(value).__name__
    return None


def _write_run(file: Any, joined: Future[bytes], start: int, end: int) -> None:
    # a slice of a view, not of the bytes: no copy
    file.write(memoryview(joined.result())[start:end])


def _hash_run(digest: Any, joined: Future[bytes], start: int, end: int) -> None:
    digest.update(memoryview(joined.result())[start:end])


class _Shards:
    """Opens, fills and closes shard files, splitting on whichever limit binds first."""

    def __init__(
        self,
        out_dir: Path,
        prefix: str,
        limits: tuple[int, int, int | None],
        pool: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
    ) -> None:
        self.out_dir, self.prefix = out_dir, prefix
        self.max_requests, self.max_bytes, self.max_tokens = limits
        self.rows: list[dict[str, Any]] = []
        self.file: Any = None
        # Writing and hashing release the GIL: a writer and a hasher thread (each in order) do
        # them while the caller's thread serialises the next chunk. At most two chunks wait, so
        # memory stays bounded.
        self.pool, self.hash_pool = pool
        self.pending: deque[Future[Any]] = deque()

    def _drain(self, keep: int) -> None:
        while len(self.pending) > keep:
            self.pending.popleft().result()

    def _open(self, first_id: str, model: str, endpoint: str) -> None:
        shard = len(self.rows)
        name = f"{self.prefix}-{shard:05d}.jsonl"
        self.final = self.out_dir / name
        self.tmp = self.out_dir / f".{name}.partial"
        self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed in _close
        self.hash = hashlib.sha256()
        self.cur: dict[str, Any] = {
            "shard": shard,
            "path": str(self.final),
            "n_requests": 0,
            "n_bytes": 0,
            "sha256": "",
            "est_input_tokens": 0,
            "max_output_tokens": 0,
            "first_custom_id": first_id,
            "last_custom_id": first_id,
            "model": model,
            "endpoint": endpoint,
        }

    def _close(self) -> None:
        if self.file is None:
            return
        self._drain(0)
        self.file.close()
        os.replace(self.tmp, self.final)
        self.cur["sha256"] = self.hash.hexdigest()
        self.rows.append(self.cur)
        self.file = None

    def write(
        self,
        pieces: list[bytes],
        sizes: list[int],
        ids: list[str],
        tokens: list[int],
        out_tokens: list[int],
        model: str,
        endpoint: str,
    ) -> None:
        """Write one chunk: ``pieces`` are its lines' bytes in order, ``sizes`` the lines' lengths."""
        # bytes.join lets go of the GIL for a join this size: the writer thread joins the chunk
        # while this one serialises the next; the runs below are slices of the joined bytes.
        joined = self.pool.submit(b"".join, pieces)
        self.pending.append(joined)
        start = offset = 0
        n = len(sizes)
        # running totals of the chunk, so that a run's bytes and tokens are two subtractions
        ends = np.cumsum(np.asarray(sizes, dtype=np.int64))
        toks_to = np.cumsum(np.asarray(tokens, dtype=np.int64))
        while start < n:
            if self.file is None:
                self._open(ids[start], model, endpoint)
            cur = self.cur
            stop = self._fit(ends, toks_to, start)
            if stop == start:
                if cur["n_requests"] == 0:
                    self._too_big(ids[start], sizes[start], tokens[start])
                self._close()
                continue
            end = int(ends[stop - 1])
            self.pending.append(self.pool.submit(_write_run, self.file, joined, offset, end))
            self.pending.append(self.hash_pool.submit(_hash_run, self.hash, joined, offset, end))
            self._drain(3)  # one chunk in flight while the next is serialised
            before = int(toks_to[start - 1]) if start else 0
            cur["n_requests"] += stop - start
            cur["n_bytes"] += end - offset
            cur["est_input_tokens"] += int(toks_to[stop - 1]) - before
            cur["max_output_tokens"] += sum(out_tokens[start:stop])
            cur["last_custom_id"] = ids[stop - 1]
            start, offset = stop, end

    def _fit(self, ends: np.ndarray, toks_to: np.ndarray, start: int) -> int:
        """Where the run from row ``start`` stops: at the first row that would take the open shard
        past a limit (the rows' running totals ``ends`` and ``toks_to`` say where each one ends)."""
        cur = self.cur
        stop: int = min(len(ends), start + max(self.max_requests - int(cur["n_requests"]), 0))
        base = int(ends[start - 1]) if start else 0
        over = np.flatnonzero(ends[start:stop] - base + cur["n_bytes"] > self.max_bytes)
        if len(over):
            stop = start + int(over[0])
        if self.max_tokens is not None:
            base = int(toks_to[start - 1]) if start else 0
            room = self.max_tokens - cur["est_input_tokens"]
            over = np.flatnonzero(toks_to[start:stop] - base > room)
            if len(over):
                stop = start + int(over[0])
        return stop

    def _too_big(self, custom_id: str, n_bytes: int, tokens: int) -> None:
        if n_bytes > self.max_bytes:
            raise InputError(
                f"custom_id {custom_id!r}: its line is {n_bytes:,} bytes, over max_bytes={self.max_bytes:,}; "
                "shorten its body or raise max_bytes (OpenAI's limit is 200 MB per file)"
            )
        raise InputError(
            f"custom_id {custom_id!r}: it alone has {tokens:,} input tokens, over "
            f"max_input_tokens={self.max_tokens:,}; raise max_input_tokens or shorten that request"
        )

    def finish(self) -> list[dict[str, Any]]:
        self._close()
        return self.rows

    def abort(self) -> None:
        for future in self.pending:
            future.cancel()
        wait(self.pending)
        if self.file is not None:
            self.file.close()
            self.tmp.unlink(missing_ok=True)


def _check_frame(requests: pd.DataFrame) -> tuple[list[str], str]:
    if not isinstance(requests, pd.DataFrame):
        raise InputError(
            f"to_jsonl() takes a requests DataFrame first, got {type(requests).__name__}"
        )
    missing = [c for c in ("custom_id", "method", "url", "body") if c not in requests.columns]
    if missing:
        raise InputError(
            f"The requests frame has no column(s) {missing}; make it with build_requests(df) "
            "(columns custom_id, method, url, body)"
        )
    if requests.empty:
        raise InputError("The requests frame is empty: there is nothing to write")
    ids = requests["custom_id"].tolist()
    # checked in C first (exact str, none empty); the loop names the first bad one
    if not (all(map(is_, map(type, ids), repeat(str))) and all(ids)):
        for pos, cid in enumerate(ids):
            if not isinstance(cid, str) or not cid:
                raise InputError(
                    f"row {pos}: custom_id {cid!r} must be a non-empty string; rebuild with build_requests()"
                )
    if len(set(ids)) != len(ids):
        seen: dict[str, int] = {}
        for pos, cid in enumerate(ids):
            first = seen.setdefault(cid, pos)
            if first != pos:
                raise InputError(
                    f"custom_id {cid!r} is in rows {first} and {pos}; custom_ids must be unique "
                    "within a batch file: drop the duplicate (requests[~requests.index.duplicated()])"
                )
    urls = requests["url"].to_numpy(dtype=object)
    endpoint = str(requests.attrs.get("endpoint") or urls[0])
    bad = np.flatnonzero(urls != endpoint)
    if len(bad):
        pos = int(bad[0])
        raise InputError(
            f"custom_id {ids[pos]!r}: url {urls[pos]!r} differs from the file's endpoint {endpoint!r}; "
            "every line of a batch file must use the batch's endpoint ('/v1/chat/completions' for "
            "OpenAI, '/chat/completions' for Azure): rebuild with build_requests(endpoint=...)"
        )
    methods = requests["method"].to_numpy(dtype=object)
    bad = np.flatnonzero(methods != "POST")
    if len(bad):
        pos = int(bad[0])
        raise InputError(
            f"custom_id {ids[pos]!r}: method {methods[pos]!r}; the Batch API only takes 'POST'"
        )
    return ids, endpoint


def _exact_tokens(requests: pd.DataFrame, costs: pd.DataFrame | None, model: str) -> list[int]:
    if costs is not None:
        if "input_tokens" not in costs.columns:
            raise InputError(
                "costs= must be the frame estimate_cost(requests) returned (no input_tokens column)"
            )
        by_id = costs["input_tokens"]
        if "custom_id" in costs.columns:
            by_id = pd.Series(by_id.to_numpy(), index=costs["custom_id"].to_numpy())
        aligned = by_id.reindex(requests["custom_id"].to_numpy())
        if aligned.isna().any():
            cid = requests["custom_id"].to_numpy()[
                int(np.flatnonzero(aligned.isna().to_numpy())[0])
            ]
            raise InputError(
                f"costs= has no row for custom_id {cid!r}; run estimate_cost(requests) on this same frame"
            )
        return [int(v) for v in aligned.to_numpy()]
    from portfolio_batch._tokens import count_body_tokens

    counts: list[int] = count_body_tokens(requests["body"].tolist(), model=model).tolist()
    return counts


def _remove_stale(out_dir: Path, prefix: str, n_shards: int) -> None:
    """Shard files of an earlier, larger write would be mistaken for part of this one."""
    pattern = re.compile(re.escape(prefix) + r"-(\d{5})\.jsonl")
    for path in out_dir.iterdir():
        match = pattern.fullmatch(path.name)
        if match and int(match.group(1)) >= n_shards:
            path.unlink()


def to_jsonl(
    requests: pd.DataFrame | Iterable[pd.DataFrame],
    out_dir: str | os.PathLike[str],
    *,
    max_requests: int = MAX_REQUESTS,
    max_bytes: int = MAX_BYTES,
    max_input_tokens: int | None = None,
    costs: pd.DataFrame | None = None,
    prefix: str = "requests",
) -> pd.DataFrame:
    """Write ``requests`` to ``out_dir/requests-00000.jsonl``, … and return the manifest.

    A new shard starts when the next line would pass ``max_requests``, ``max_bytes`` (file size)
    or ``max_input_tokens`` (your organisation's enqueued-token limit for the model).
    ``est_input_tokens`` is exact when ``costs=`` (from :func:`estimate_cost`) is given or
    ``max_input_tokens`` is set, else a fast approximation (``manifest.attrs["token_count"]``).

        >>> manifest = to_jsonl(build_requests(portfolio), "out/", max_requests=10)  # doctest: +SKIP
        >>> manifest.n_requests.tolist()                                           # doctest: +SKIP
        [10, 10, 10, 10]

    ``requests`` may also be an iterable of requests frames, written one after the other into the
    same shards, so a frame too big for memory never has to exist whole:
    ``to_jsonl((build_requests(part) for part in chunks), "out/")``.
    """
    _check_options(max_requests, max_bytes, max_input_tokens, prefix)
    single = isinstance(requests, pd.DataFrame)
    frames: Iterable[Any] = [requests] if single else requests
    if not single and not isinstance(requests, Iterable):
        _check_frame(requests)  # raises the "takes a requests DataFrame" error
    exact = costs is not None or max_input_tokens is not None
    if isinstance(requests, RequestChunks) and not exact:
        # straight from build_requests(chunksize=): the chunks not built yet come without bodies
        frames = requests.prepared()

    out = writable_dir(
        out_dir, what="to_jsonl(out_dir=...)", fix="pass a directory you can write to"
    )
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="to_jsonl-writer")
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="to_jsonl-sha256")
    limits = (int(max_requests), int(max_bytes), max_input_tokens)
    shards = _Shards(out, prefix, limits, (writer, hasher))
    seen: set[str] = set()  # custom_ids of earlier frames (iterable input only)
    first_id = endpoint = model = ""
    retry_of: set[str] = set()  # retry_failed()'s column, carried into the manifest for submit()
    try:
        for frame in frames:
            if isinstance(frame, PreparedRequests):
                if first_id and _write_prepared(shards, frame, seen, first_id, endpoint, model):
                    continue
                frame = frame.frame()  # the first chunk, or one the splicer cannot write
            if isinstance(frame, pd.DataFrame):
                retry_of.update(retry_of_batches(frame))
            if not single and isinstance(frame, pd.DataFrame) and frame.empty:
                continue
            ids, frame_endpoint = _check_frame(frame)
            bodies = frame["body"].tolist()
            if not first_id:
                first_id, endpoint = ids[0], frame_endpoint
                _check_body(ids[0], bodies[0])
                model = str(bodies[0]["model"])
            elif frame_endpoint != endpoint:
                raise InputError(
                    f"custom_id {ids[0]!r}: url {frame_endpoint!r} differs from the file's endpoint "
                    f"{endpoint!r} (custom_id {first_id!r}); write each endpoint to its own out_dir"
                )
            if not single:
                _check_repeats(seen, ids)
            tokens = _exact_tokens(frame, costs, model) if exact else None
            _write_frame(shards, ids, bodies, tokens, endpoint, model, first_id)
            # let this frame go before the iterable builds the next one
            del frame, bodies, ids, tokens
        if not first_id:
            raise InputError(
                "No requests were given (every frame was empty): there is nothing to write"
            )
        rows = shards.finish()
    except BaseException:
        shards.abort()
        raise
    finally:
        writer.shutdown(wait=True)
        hasher.shutdown(wait=True)
    _remove_stale(out, prefix, len(rows))
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    manifest["retry_of"] = pd.Series(
        ",".join(sorted(retry_of)) or None, index=manifest.index, dtype=object
    )
    manifest.attrs = {
        "token_count": "exact" if exact else "approx",
        "out_dir": str(out),
        "max_requests": int(max_requests),
        "max_bytes": int(max_bytes),
        "max_input_tokens": max_input_tokens,
    }
    return manifest


def _check_options(max_requests: Any, max_bytes: Any, max_input_tokens: Any, prefix: Any) -> None:
    for name, value in (
        ("max_requests", max_requests),
        ("max_bytes", max_bytes),
        ("max_input_tokens", max_input_tokens),
    ):
        if value is None and name == "max_input_tokens":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"{name}={value!r} must be a positive integer")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
        raise InputError(f"prefix={prefix!r} may only use letters, digits, '_', '.' and '-'")


def _check_repeats(seen: set[str], ids: list[str]) -> None:
    """Refuse custom_ids an earlier frame had, then add them to ``seen``."""
    repeated = seen.intersection(ids)
    if repeated:
        raise InputError(
            f"custom_id {sorted(repeated)[0]!r} is in two of the frames given; custom_ids "
            "must be unique within a batch file: drop the duplicate"
        )
    seen.update(ids)


def _write_prepared(
    shards: _Shards,
    prepared: PreparedRequests,
    seen: set[str],
    first_id: str,
    endpoint: str,
    model: str,
) -> bool:
    """Write a chunk ``build_requests(chunksize=)`` prepared, its lines spliced from its user
    messages (the bytes its frame would give); False, having written nothing, when it is not
    the spliceable kind or not for this file's endpoint and model (its frame then goes the
    usual way, which names what is wrong)."""
    ids, contents = prepared.ids, prepared.contents
    if not ids or prepared.attrs["endpoint"] != endpoint:
        return False
    splice = _Splicer.for_body(prepared.bodies(contents[:1])[0], endpoint, model)
    if splice is None:
        return False
    _check_repeats(seen, ids)
    for start in range(0, len(ids), _CHUNK):
        stop = min(start + _CHUNK, len(ids))
        lines = splice.lines(ids[start:stop], contents[start:stop])
        if lines is None:  # a message orjson refuses: the row-by-row path names its custom_id
            bodies = prepared.bodies(contents[start:stop])
            part_ids = ids[start:stop]
            lines = _serialise(
                part_ids,
                bodies,
                0,
                len(bodies),
                endpoint,
                model,
                splice,
                first_id,
                need_approx=True,
            )
        pieces, sizes, approx, out_tokens = lines
        shards.write(pieces, sizes, ids[start:stop], approx, out_tokens, model, endpoint)
    return True


def _write_frame(
    shards: _Shards,
    ids: list[str],
    bodies: list[Any],
    tokens: list[int] | None,
    endpoint: str,
    model: str,
    first_id: str,
) -> None:
    """Serialise one frame's rows ``_CHUNK`` at a time into ``shards`` (``tokens``: the exact
    input tokens of each row, or None for the approximation)."""
    # each build_requests call has its own shared objects: recognise this frame's
    splice = _Splicer.for_body(bodies[0], endpoint, model)
    for start in range(0, len(bodies), _CHUNK):
        stop = min(start + _CHUNK, len(bodies))
        pieces, sizes, approx, out_tokens = _serialise(
            ids,
            bodies,
            start,
            stop,
            endpoint,
            model,
            splice,
            first_id,
            need_approx=tokens is None,
        )
        chunk_tokens = tokens[start:stop] if tokens is not None else approx
        shards.write(pieces, sizes, ids[start:stop], chunk_tokens, out_tokens, model, endpoint)


def _check_body(custom_id: str, body: Any) -> None:
    if not isinstance(body, Mapping):
        raise InputError(
            f"custom_id {custom_id!r}: body is a {type(body).__name__}, not a dict of the endpoint's "
            "parameters; if it holds JSON text, parse it first (requests.body.map(orjson.loads))"
        )
    if not isinstance(body.get("model"), str) or not body.get("model"):
        raise InputError(
            f"custom_id {custom_id!r}: body has no 'model' string; every request names its model "
            "(for Azure, the batch deployment name)"
        )


def _splice(
    head: bytes, ids: list[bytes], middle: bytes, values: list[bytes], tail: bytes
) -> tuple[list[bytes], list[int]]:
    """Line i is ``head + ids[i] + middle + values[i] + tail``: the parts of all the lines in
    order (one ``b"".join`` writes them) and each line's size, built a step at a time.

    >>> _splice(b"<", [b"a", b"b"], b"=", [b"1", b"22"], b">\\n")
    ([b'<', b'a', b'=', b'1', b'>\\n', b'<', b'b', b'=', b'22', b'>\\n'], [6, 7])
    """
    n = len(ids)
    parts = [head, b"", middle, b"", tail] * n
    parts[1::5] = ids
    parts[3::5] = values
    sizes = np.fromiter(map(len, ids), np.int64, n)
    sizes += np.fromiter(map(len, values), np.int64, n) + (len(head) + len(middle) + len(tail))
    return parts, sizes.tolist()


class _Splicer:
    """Bodies made by ``build_requests`` share everything but the user message: serialise the
    shared bytes once and splice each row's custom_id and user message between them. The bytes
    are exactly what ``orjson.dumps`` gives for the whole line (a test checks it)."""

    def __init__(self, body: dict[str, Any], endpoint: str, model: str) -> None:
        messages = body["messages"]
        self.system, self.response_format = messages[0], body["response_format"]
        self.model = model
        self.max_tokens: int = body["max_tokens"]  # the very object every body shares
        self.head = b'{"custom_id":'
        self.middle = (
            b',"method":"POST","url":'
            + _dumps(endpoint)
            + b',"body":{"model":'
            + _dumps(model)
            + b',"messages":['
            + _dumps(self.system)
            + b","
        )
        self.tail = (
            b'],"max_tokens":'
            + _dumps(self.max_tokens)
            + b',"response_format":'
            + _dumps(self.response_format)
            + b"}}\n"
        )
        # The approximate token count (no tokenizer: loading one takes ~1.5 s): ~4 characters a
        # token for the shared messages and schema, plus the cookbook's per-message overheads.
        shared = len(self.system.get("content") or "") + len(_dumps(self.response_format))
        self.shared_tokens = 3 + 3 + 3 + math.ceil(shared / 4)

    def chunk(
        self, ids: list[str], bodies: list[Any], *, need_approx: bool
    ) -> tuple[list[bytes], list[int], list[int], list[int]] | None:
        """The lines of ``bodies`` when every one passes the row-by-row splice test of
        :func:`_serialise`, built a step at a time over the whole chunk (one ``map`` or list
        comprehension per step, not ~30 bytecodes per row); None when one does not, and the
        row-by-row path writes the chunk. The bytes are the same either way."""
        rf, limit, model, system = self.response_format, self.max_tokens, self.model, self.system
        try:  # subscripts, not .get(): a missing key raises, and the row-by-row path takes it
            messages = [
                body["messages"]
                for body in bodies
                if type(body) is dict
                and len(body) == 4
                and body["response_format"] is rf
                and body["max_tokens"] is limit
                and body["model"] == model
                and tuple(body) == _CHAT_KEYS
            ]
        except KeyError:
            return None
        users = [m[1] for m in messages if type(m) is list and len(m) == 2 and m[0] is system]
        if len(users) != len(bodies):
            return None
        try:
            # No default= or options: a value that needs them raises here (it never serialises
            # differently), and the row-by-row path writes it or names it.
            user_json = list(map(orjson.dumps, users))
            cid_json = list(map(orjson.dumps, ids))
        except TypeError:
            return None
        parts, sizes = _splice(self.head, cid_json, self.middle, user_json, self.tail)
        approx = self._approx(users, user_json) if need_approx else []
        return parts, sizes, approx, [limit] * len(bodies)

    def lines(
        self, ids: list[str], contents: list[str]
    ) -> tuple[list[bytes], list[int], list[int], list[int]] | None:
        """The lines of the bodies ``PreparedRequests.bodies`` makes for ``contents`` (its user
        messages are ``{"role": "user", "content": ...}``), without making them: the bytes
        :meth:`chunk` gives for those bodies. None if orjson refuses one."""
        try:
            cid_json = list(map(orjson.dumps, ids))
            content_json = list(map(orjson.dumps, contents))
        except TypeError:
            return None
        middle = self.middle + b'{"role":"user","content":'
        parts, sizes = _splice(self.head, cid_json, middle, content_json, b"}" + self.tail)
        extra = np.fromiter(map(len, contents), np.int64, len(ids))
        approx = ((extra + 3) // 4 + self.shared_tokens).tolist()
        return parts, sizes, approx, [self.max_tokens] * len(ids)

    def _approx(self, users: list[Any], user_json: list[bytes]) -> list[int]:
        """The row-by-row path's estimate: shared tokens plus a quarter of the user message's
        content characters (of its JSON when the content is not a string)."""
        contents: list[Any] = []
        if all(map(is_, map(type, users), repeat(dict))):
            with contextlib.suppress(KeyError):  # a message without content: counted below
                contents = list(map(itemgetter("content"), users))
        if contents and all(map(is_, map(type, contents), repeat(str))):
            extra = np.fromiter(map(len, contents), np.int64, len(users))
        else:
            found = [u.get("content") if type(u) is dict else None for u in users]
            extra = np.array(
                [
                    len(c) if isinstance(c, str) else len(j)
                    for c, j in zip(found, user_json, strict=True)
                ],
                dtype=np.int64,
            )
        approx: list[int] = ((extra + 3) // 4 + self.shared_tokens).tolist()
        return approx

    @classmethod
    def for_body(cls, body: Any, endpoint: str, model: str) -> _Splicer | None:
        if not (type(body) is dict and tuple(body) == _CHAT_KEYS and body.get("model") == model):
            return None
        messages = body["messages"]
        if not (type(messages) is list and len(messages) == 2 and type(messages[0]) is dict):
            return None
        if type(body["max_tokens"]) is not int or type(body["response_format"]) is not dict:
            return None
        return cls(body, endpoint, model)


def _serialise(
    ids: list[str],
    bodies: list[Any],
    start: int,
    stop: int,
    endpoint: str,
    model: str,
    splice: _Splicer | None,
    first_id: str,
    *,
    need_approx: bool,
) -> tuple[list[bytes], list[int], list[int], list[int]]:
    """Rows ``start:stop`` as the pieces of their lines, one after the other (joined once for the
    whole chunk, by the writer thread: joining each line first would copy every byte twice), and
    each line's length."""
    parts: list[bytes] = []
    sizes: list[int] = []
    approx: list[int] = []
    out_tokens: list[int] = []
    dumps = _dumps
    fast_dumps = orjson.dumps
    if splice is not None:
        spliced = splice.chunk(ids[start:stop], bodies[start:stop], need_approx=need_approx)
        if spliced is not None:
            return spliced
        system, response_format, max_tokens = (
            splice.system,
            splice.response_format,
            splice.max_tokens,
        )
        head, middle, tail, shared_tokens = (
            splice.head,
            splice.middle,
            splice.tail,
            splice.shared_tokens,
        )
        fixed = len(head) + len(middle) + len(tail)
    for i in range(start, stop):
        body, cid = bodies[i], ids[i]
        # the cheap identity checks first; the key order check last
        if (
            splice is not None
            and type(body) is dict
            and len(body) == 4
            and body.get("response_format") is response_format
            and body.get("max_tokens") is max_tokens
            and type(messages := body.get("messages")) is list
            and len(messages) == 2
            and messages[0] is system
            and body.get("model") == model
            and tuple(body) == _CHAT_KEYS
        ):
            user = messages[1]
            try:
                # orjson directly, not through _dumps: two Python calls fewer per row (~8 %)
                cid_json = fast_dumps(cid)
                user_json = fast_dumps(user, default=json_default, option=_OPTIONS)
            except TypeError:
                _raise_unserialisable(cid, body)
            parts += (head, cid_json, middle, user_json, tail)
            sizes.append(fixed + len(cid_json) + len(user_json))
            out_tokens.append(max_tokens)
            if need_approx:
                content = user.get("content") if type(user) is dict else None
                extra = len(content) if isinstance(content, str) else len(user_json)
                approx.append(shared_tokens + (extra + 3) // 4)
            continue
        _check_body(cid, body)
        if body["model"] != model:
            raise InputError(
                f"custom_id {cid!r} uses model {body['model']!r} but custom_id {first_id!r} uses {model!r}; "
                "a batch file takes one model: split the frame by model and write each part to its own out_dir"
            )
        try:
            line = (
                dumps({"custom_id": cid, "method": "POST", "url": endpoint, "body": body}) + b"\n"
            )
        except TypeError:
            _raise_unserialisable(cid, body)
        parts.append(line)
        sizes.append(len(line))
        limit = body.get(
            "max_tokens", body.get("max_completion_tokens", body.get("max_output_tokens"))
        )
        out_tokens.append(int(limit) if isinstance(limit, (int, np.integer)) else 0)
        if need_approx:
            approx.append((len(line) + 3) // 4)
    return parts, sizes, approx, out_tokens


def _raise_unserialisable(custom_id: str, body: Any) -> None:
    found = _bad_field(body, "")
    where, kind = found if found else ("body", type(body).__name__)
    raise InputError(
        f"custom_id {custom_id!r}: body field {where} holds a {kind}, which cannot be written as JSON; "
        "convert it to a str, number, list or dict"
    )


# One parsed line, as orjson.loads returns it (a batch file's lines are all objects).
JSONValue = dict[str, Any] | list[Any] | str | int | float | bool | None


@overload
def iter_jsonl(
    path: str | os.PathLike[str],
    *,
    errors: Literal["raise", "skip"] = ...,
    malformed: list[tuple[int, str]] | None = ...,
    line_numbers: Literal[False] = ...,
) -> Iterator[JSONValue]: ...


@overload
def iter_jsonl(
    path: str | os.PathLike[str],
    *,
    errors: Literal["raise", "skip"] = ...,
    malformed: list[tuple[int, str]] | None = ...,
    line_numbers: Literal[True],
) -> Iterator[tuple[int, JSONValue]]: ...


def iter_jsonl(
    path: str | os.PathLike[str],
    *,
    errors: Literal["raise", "skip"] = "raise",
    malformed: list[tuple[int, str]] | None = None,
    line_numbers: bool = False,
) -> Iterator[JSONValue | tuple[int, JSONValue]]:
    """Parse a JSONL file one line at a time (never the whole file in memory).

    Blank lines are skipped. A line that is not JSON raises :class:`InputError` naming the file
    and line; with ``errors="skip"`` it is skipped instead and, if ``malformed`` is a list,
    ``(line_number, message)`` is appended to it. ``line_numbers=True`` yields
    ``(line_number, obj)`` pairs (1-based).

        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "out.jsonl"
        >>> _ = path.write_text('{"custom_id": "risk-1"}\\n\\nnot json\\n{"custom_id": "risk-2"}\\n')
        >>> [line["custom_id"] for line in iter_jsonl(path, errors="skip")]
        ['risk-1', 'risk-2']
        >>> next(iter_jsonl(path, line_numbers=True))
        (1, {'custom_id': 'risk-1'})
    """
    if errors not in ("raise", "skip"):
        raise InputError(f"errors={errors!r} must be 'raise' or 'skip'")
    loads = orjson.loads
    with open(path, "rb", buffering=1 << 20) as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                obj = loads(raw)
            except orjson.JSONDecodeError as exc:
                message = f"{os.fspath(path)}, line {number}: not valid JSON ({exc})"
                if errors == "raise":
                    raise InputError(
                        message + "; fix or remove that line, or pass errors='skip'"
                    ) from None
                if malformed is not None:
                    malformed.append((number, message))
                continue
            yield (number, obj) if line_numbers else obj
