"""From batch output and error files to one results row per requested ``custom_id``.

    >>> results = aggregate_df(jobs, requests)                              # doctest: +SKIP
    >>> results = aggregate_df(None, requests, output_files=["out.jsonl"])  # doctest: +SKIP

Files are read line by line. Each line is decoded by ``msgspec`` straight into typed Structs holding
only the fields kept, and the answer text is decoded by a Struct built from the request's JSON
schema, so decoding also validates; schemas that need more than a flat object fall back to
``jsonschema``. Columns are built as lists and turned into one DataFrame at the end.
Summaries are in ``summary.py``, retries and merges in ``retry.py``.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from operator import attrgetter
from pathlib import Path
from typing import Any, cast

import msgspec
import numpy as np
import openai
import orjson
import pandas as pd

from portfolio_batch._contract import (
    ANSWER_COLUMNS,
    NON_DATA_COLUMNS,
    ROW_COLUMNS,
    TERMINAL,
    TOKEN_COLUMNS,
    USAGE_COLUMNS,
    ResultRow,
)
from portfolio_batch._cost import PricesArg
from portfolio_batch._decode import LINE_DECODER, Line, failed_row, row_of
from portfolio_batch._requests import ECHO_FIELD, gc_paused
from portfolio_batch._validate import Validator, schema_of_body, validator_for
from portfolio_batch.errors import DownloadError, InputError, PricingError, ResultFileGoneError

__all__ = ["aggregate_df"]

log = logging.getLogger(__name__)

# When one custom_id has several lines, the most useful one wins (ranks every RESULT_STATUSES).
_RANK = {
    "missing": 0,
    "expired": 1,
    "cancelled": 1,
    "failed": 2,
    "invalid_output": 3,
    "succeeded": 4,
}
_NOT_DATA = frozenset(NON_DATA_COLUMNS)
_CID = attrgetter("custom_id")
_CHUNK = 512 << 10  # bytes decoded per call: small enough that its objects stay in the CPU cache
_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*("(?:[^"\\]|\\.)*")')


class Collector:
    """Every requested custom_id's row, filled block by block; one DataFrame at the end.

    Rows are stored as columns (lists), appended in file order: a block of lines is turned into
    rows by ``row_of`` and transposed onto the columns at once, so no per-row tuple or decoded
    answer outlives its block. ``where[i]`` is the row of request ``i``; row 0 is "missing".
    ``frame`` reorders each column with numpy.
    """

    def __init__(self, requests: pd.DataFrame) -> None:
        self.ids = custom_ids(requests)
        n = len(self.ids)
        self.pos = dict(zip(self.ids, range(n), strict=True))
        if len(self.pos) != n:
            dup = pd.Index(self.ids)[pd.Index(self.ids).duplicated()][0]
            raise InputError(
                f"custom_id {dup!r} appears more than once in the requests; custom_ids must be unique"
            )
        # one validator for every row (the usual case), or one per row
        self.single, self.validators = _validators(requests)
        distinct = (
            [self.single]
            if self.single
            else list(dict.fromkeys(v for v in self.validators or () if v))
        )
        self.fields: dict[str, str] = {}  # name -> dtype, over every schema in the requests
        for v in distinct:
            for name, dtype in zip(v.fields, v.dtypes, strict=True):
                self.fields.setdefault(name, dtype)
        self.where = np.zeros(n, dtype=np.intp)
        self.empty = self.single.empty if self.single is not None else None
        # ROW_COLUMNS -> its values, in row order (the answer is not kept, only its fields)
        missing = failed_row("missing", None, None)
        self.cols: dict[str, list[Any]] = {c: [getattr(missing, c)] for c in ROW_COLUMNS}
        self.field_cols: dict[str, list[Any]] = {f: [None] for f in self.fields}
        self.batch_id: list[str | None] = [None]
        self.unknown = self.duplicates = self.malformed = 0

    def __len__(self) -> int:  # rows stored, the shared "missing" row included
        return len(self.batch_id)

    def add_lines(
        self, lines: Sequence[Line], *, batch_id: str | None, name: str, first: int
    ) -> None:
        """Record decoded lines; ``name`` and ``first`` (line number of the first) are for logs."""
        if self.validators is None and self._add_fast(lines, batch_id):
            return
        for k, line in enumerate(lines):
            try:
                i = self.pos[line.custom_id]
            except KeyError:
                self.unknown += 1
                log.warning(
                    "%s line %d: custom_id %r is not in the requests; ignored",
                    name,
                    first + k,
                    line.custom_id,
                )
                continue
            v = self.single if self.validators is None else self.validators[i]
            row = row_of(line, None if v is None else v.decode, None if v is None else v.empty)
            j = self.where[i]
            if (
                j
                and self.cols["status"][j] != "missing"
                and not self._replaces(i, row.status, f"{name} line {first + k}")
            ):
                continue
            self._append(i, row, v, batch_id)

    def _add_fast(self, lines: Sequence[Line], batch_id: str | None) -> bool:
        """The usual block: known, new, distinct custom_ids and one schema. Done with C-level
        maps instead of a Python loop; False (nothing recorded) when the block needs the loop."""
        n = len(lines)
        try:
            idx = np.fromiter(map(self.pos.__getitem__, map(_CID, lines)), dtype=np.intp, count=n)
        except KeyError:
            return False
        if self.where[idx].any() or len(np.unique(idx)) != n:
            return False
        v = self.single
        rows = list(map(row_of, lines, repeat(None if v is None else v.decode), repeat(self.empty)))
        self.where[idx] = np.arange(len(self), len(self) + n)
        columns = dict(zip(ResultRow._fields, zip(*rows, strict=True), strict=True))
        for name, col in self.cols.items():
            col.extend(columns[name])
        if v is not None:
            for f, get in zip(v.fields, v.getters, strict=True):
                self.field_cols[f].extend(map(get, columns["answer"]))
        self.batch_id.extend(repeat(batch_id, n))
        return True

    def _append(self, i: int, row: ResultRow, v: Validator | None, batch_id: str | None) -> None:
        self.where[i] = len(self)
        for col, value in zip(self.cols.values(), row, strict=False):  # cols: the row's order
            col.append(value)
        answer = row.answer
        for f, col in self.field_cols.items():
            get = v.getter(f) if v is not None and answer is not None else None
            col.append(get(answer) if get is not None else None)
        self.batch_id.append(batch_id)

    def _replaces(self, i: int, new: str, where: str) -> bool:
        """A second line for a custom_id: the more useful one wins (succeeded over failed…)."""
        self.duplicates += 1
        old = self.cols["status"][self.where[i]]
        keep = _RANK[new] <= _RANK[old]
        what = "ignored, kept the earlier" if keep else "replaces the earlier"
        log.warning("%s: another line for %r (%s) %s %s one", where, self.ids[i], new, what, old)
        return not keep

    def malformed_line(self, raw: bytes, where: str, problem: str) -> None:
        """Count a line that is not an output line; name its request when the id can be read."""
        self.malformed += 1
        m = _CUSTOM_ID.search(raw)
        cid = _loads_or_none(m.group(1)) if m else None
        i = self.pos.get(cid) if isinstance(cid, str) else None
        log.warning("%s: malformed line (%s); custom_id %r left missing", where, problem, cid)
        if i is not None and self.cols["status"][self.where[i]] == "missing":
            msg = f"its result line ({where}) is malformed: {problem}"
            self._append(i, failed_row("missing", "malformed_line", msg), None, None)

    def files_gone(
        self, *, batch_id: str, files: list[tuple[str, str]], shard_path: str | None
    ) -> list[dict[str, Any]]:
        """A batch's result files (``(kind, file_id)``) that the server no longer has: the
        batch's requests still without a row (read from its request shard) are ``missing`` with
        that reason, which ``retry_failed`` sends again. One stats entry per file."""
        names = " and ".join(f"{kind} file {file_id}" for kind, file_id in files)
        are, were = ("are", "were") if len(files) > 1 else ("is", "was")
        msg = (
            f"batch {batch_id}'s {names} {are} gone from the server (deleted, or past the 30 "
            f"days OpenAI keeps batch files) and {were} never downloaded here: resend with "
            "retry_failed()"
        )
        marked = 0
        if shard_path is not None and Path(shard_path).is_file():
            row = failed_row("missing", "result_file_gone", msg)
            with open(shard_path, "rb") as fh:
                for raw in fh:
                    m = _CUSTOM_ID.search(raw)
                    cid = _loads_or_none(m.group(1)) if m else None
                    i = self.pos.get(cid) if isinstance(cid, str) else None
                    if i is not None and self.where[i] == 0:  # no row yet, not even a marked one
                        self._append(i, row, None, batch_id)
                        marked += 1
        else:
            log.warning(
                "batch %s: its request shard %s is not here, so its requests without a result "
                "are plain missing rows",
                batch_id,
                shard_path,
            )
        return [
            {
                "path": None,
                "file_id": file_id,
                "batch_id": batch_id,
                "kind": kind,
                "lines": 0,
                "malformed": 0,
                "unknown_custom_ids": 0,
                "duplicates": 0,
                "gone": True,
                "requests_marked": marked,
            }
            for kind, file_id in files
        ]

    def read_file(
        self,
        path: Path,
        *,
        batch_id: str | None = None,
        kind: str = "output",
        file_id: str | None = None,
    ) -> dict[str, Any]:
        """Parse one JSONL file in bounded chunks of whole lines; returns its counts."""
        before = (self.malformed, self.unknown, self.duplicates)
        lineno = blank = 0
        with open(path, "rb") as fh:
            for block, n in _blocks(fh, _CHUNK):
                blank += self._chunk(block, n, batch_id, path.name, lineno + 1)
                lineno += n
        return {
            "path": str(path),
            "file_id": file_id,
            "batch_id": batch_id,
            "kind": kind,
            "lines": lineno - blank,
            "malformed": self.malformed - before[0],
            "unknown_custom_ids": self.unknown - before[1],
            "duplicates": self.duplicates - before[2],
        }

    def _chunk(
        self, chunk: memoryview | bytes, n: int, batch_id: str | None, name: str, first: int
    ) -> int:
        """Decode ``n`` lines in one call; on any doubt, line by line. Returns the blank lines."""
        try:
            lines = LINE_DECODER.decode_lines(chunk)
        except msgspec.DecodeError:
            lines = None
        # decode_lines reads newlines as whitespace, so a broken line could run into the next:
        # the one-call result only counts when it has exactly one object per line
        if lines is not None and len(lines) == n:
            self.add_lines(lines, batch_id=batch_id, name=name, first=first)
            return 0
        blank = 0
        for k, raw in enumerate(bytes(chunk).split(b"\n")[:n]):
            try:
                line = LINE_DECODER.decode(raw)
            except msgspec.DecodeError as exc:  # ValidationError included
                if raw.strip():
                    self.malformed_line(raw, f"{name} line {first + k}", str(exc))
                else:
                    blank += 1
                continue
            self.add_lines((line,), batch_id=batch_id, name=name, first=first + k)
        return blank

    def frame(
        self,
        requests: pd.DataFrame,
        *,
        prices: PricesArg = None,
        batch: bool = True,
        backend: str | None = None,
    ) -> pd.DataFrame:
        """The results frame, in the requests' row order; ``backend`` is where the answers came
        from (``backend_name``), None when unknown (files given by hand).

        The object columns are written straight into one 2-D block that becomes the frame's own
        (no consolidation copy); the typed columns are inserted next to them.
        """
        idx, n, m = self.where, len(self.ids), len(self)
        obj_fields = [f for f, d in self.fields.items() if d == "object"]
        obj_names = [
            "custom_id",
            "status",
            "error_code",
            "error_message",
            "finish_reason",
            "content",
            *obj_fields,
            "batch_id",
            "model",
            "requested_model",
        ]
        block = np.empty((len(obj_names), n), dtype=object)
        put = dict(zip(obj_names, block, strict=True))
        put["custom_id"][:] = np.fromiter(self.ids, dtype=object, count=n)
        for name in ("status", "error_code", "error_message", "finish_reason", "content", "model"):
            np.take(np.fromiter(self.cols[name], dtype=object, count=m), idx, out=put[name])
        np.take(np.fromiter(self.batch_id, dtype=object, count=m), idx, out=put["batch_id"])
        typed: dict[str, Any] = {}
        wrong = self._key_mismatches(requests, put)
        for f, values in self.field_cols.items():
            arr = np.fromiter(values, dtype=object, count=m)
            col = put[f] if f in put else np.empty(n, dtype=object)
            np.take(arr, idx, out=col)
            if len(wrong):  # like any invalid_output row: no answer fields, the raw content kept
                col[wrong] = None
            if f not in put:
                typed[f] = _typed(col, self.fields[f])
        typed["http_status"] = _int_column(_numbers(self.cols["http_status"])[idx])
        tokens = {name: _numbers(self.cols[name])[idx] for name in TOKEN_COLUMNS}
        typed.update((name, _int_column(arr)) for name, arr in tokens.items())
        put["requested_model"][:] = _request_models(requests)
        engine, priced = _provenance(put["model"], put["requested_model"], backend)
        typed["cost_usd"] = _cost(
            priced, tokens, prices=prices, batch=batch, provider=_pricing_at(backend)
        )
        for c in requests.columns:
            if c not in _NOT_DATA:
                typed[c] = requests[c].array
        out = pd.DataFrame(
            block.T,
            columns=obj_names,
            index=pd.Index(self.ids, name="custom_id", dtype=object),
            dtype=object,
            copy=False,
        )
        order = [
            "custom_id",
            *(c for c in requests.columns if c not in _NOT_DATA),
            *ANSWER_COLUMNS,
            *self.fields,
            *USAGE_COLUMNS,
        ]
        for loc, name in enumerate(order):  # in final order, so each loc is already right
            if name in typed:
                out.insert(loc, name, typed[name])
        out.attrs.update(
            malformed_lines=self.malformed,
            unknown_custom_ids=self.unknown,
            duplicate_lines=self.duplicates,
            mode="batch" if batch else "sync",
            backend=backend,
            engine=engine,
            simulated=engine is not None,
        )
        # what check_answers() compares the answers with: the key, the schema and the prompt
        for name in ("key", "prompt_version", "schema"):
            if requests.attrs.get(name) is not None:
                out.attrs[name] = requests.attrs[name]
        prompt = _system_prompt(requests)
        if prompt is not None:
            out.attrs["system_prompt"] = prompt
        return out

    def _key_mismatches(self, requests: pd.DataFrame, put: dict[str, np.ndarray]) -> np.ndarray:
        """The rows (in frame order) whose answer echoes another key than the request's in
        ``ECHO_FIELD``; they become ``invalid_output`` / ``key_mismatch`` here, in ``put``.

        One vectorised comparison; only the few rows not equal as they are get a closer look
        (``echoes_key``), so this costs ~1 % of an aggregation.
        """
        key = requests.attrs.get("key")
        echo_col = self.field_cols.get(ECHO_FIELD)
        if echo_col is None or key is None or key not in requests.columns:
            return _NO_ROWS
        echo = np.fromiter(echo_col, dtype=object, count=len(self))[self.where]
        sent = requests[key].to_numpy(dtype=object)
        asked = put["status"] == "succeeded"
        if self.validators is not None:  # mixed schemas: only rows whose schema asks for the echo
            asked &= np.fromiter(
                (v is not None and ECHO_FIELD in v.fields for v in self.validators), dtype=bool
            )
        differ = np.flatnonzero(asked & (echo != sent))
        if not len(differ):
            return differ
        keys = {str(k) for k in sent}
        wrong = differ[[not echoes_key(echo[i], sent[i], keys) for i in differ.tolist()]]
        for i in wrong.tolist():
            put["status"][i] = "invalid_output"
            put["error_code"][i] = "key_mismatch"
            put["error_message"][i] = (
                f"the answer's {ECHO_FIELD} is {echo[i]!r} but this request's {key} is "
                f"{sent[i]!r}: the answer may belong to another request (answers mapped to the "
                "wrong requests), or the model did not copy the key; retry_failed() sends it again"
            )
        if len(wrong):
            log.warning(
                "%d answer(s) echo another key than their request's, e.g. custom_id %r; they are "
                "invalid_output with error_code 'key_mismatch'",
                len(wrong),
                self.ids[int(wrong[0])],
            )
        return wrong


_NO_ROWS = np.empty(0, dtype=np.intp)


def echoes_key(answer: Any, sent: Any, keys: set[str] | None = None) -> bool:
    """Whether an answer's echoed key is the request's key ``sent``.

    Compared after stripping surrounding whitespace and case-insensitively (a model writing
    ``brk.b`` for ``BRK.B`` answered the right request), unless the echo is exactly another of
    the requests' ``keys``: then it names that other request. A number key is compared as the
    text the prompt showed (``str`` and JSON agree on numbers: ``7``, ``0.25``, ``1e+20``).

        >>> echoes_key(" nvda", "NVDA"), echoes_key("AMD", "NVDA"), echoes_key("abc", "ABC", {"abc", "ABC"})
        (True, False, False)
    """
    if not isinstance(answer, str):
        return False
    text = answer.strip()
    wanted = str(sent).strip()
    if text == wanted:
        return True
    if keys is not None and text in keys:
        return False
    return text.casefold() == wanted.casefold()


def _system_prompt(requests: pd.DataFrame) -> str | None:
    """The first request's system (or developer) message: what check_answers looks for echoes of."""
    if "body" not in requests.columns or not len(requests):
        return None
    body = requests["body"].iloc[0]
    messages = body.get("messages") if isinstance(body, dict) else None
    for message in messages or ():
        if isinstance(message, dict) and message.get("role") in ("system", "developer"):
            content = message.get("content")
            return content if isinstance(content, str) else None
    return None


def _numbers(values: list[Any]) -> np.ndarray:
    return np.array(values, dtype=float)  # None -> NaN


def _take(column: Iterable[Any], n: int, idx: np.ndarray) -> np.ndarray:
    """The ``n`` values of ``column`` reordered by ``idx``, as an object array (a list value stays
    one element, never a second dimension)."""
    values: np.ndarray = np.fromiter(column, dtype=object, count=n)[idx]
    return values


def _blocks(fh: io.BufferedIOBase, size: int) -> Iterator[tuple[memoryview | bytes, int]]:
    """(block, number of lines) for blocks of whole lines read into one reused buffer.

    Reusing the buffer matters: a fresh 512 KiB bytes object per block costs an mmap, page faults
    and an munmap each time. A block is only valid until the next one is read.
    """
    buf = bytearray(size)
    view = memoryview(buf)
    start = 0  # bytes of an unfinished line carried over to the front
    while True:
        n = fh.readinto(view[start:])
        end = start + n
        if n == 0:
            if start:  # the last line has no newline
                yield view[:start], buf.count(b"\n", 0, start) + 1
            return
        cut = buf.rfind(b"\n", 0, end) + 1
        if cut == 0:  # a line longer than the buffer: finish it on its own
            line = bytes(view[:end]) + fh.readline()
            yield line, line.count(b"\n") + (not line.endswith(b"\n"))
            start = 0
            continue
        # numpy counts newlines 4x faster than bytearray.count
        yield view[:cut], int(np.count_nonzero(np.frombuffer(buf, np.uint8, cut) == 10))
        buf[: end - cut] = buf[cut:end]  # same length: allowed while views exist
        start = end - cut


def _int_column(values: Any) -> pd.arrays.IntegerArray:
    """A nullable Int64 column from numbers and Nones, without pandas' per-element inference."""
    arr = np.asarray(values, dtype=float)
    mask = np.isnan(arr)
    return pd.arrays.IntegerArray(np.where(mask, 0, arr).astype(np.int64), mask)


def aggregate_df(
    jobs: pd.DataFrame | None,
    requests: pd.DataFrame,
    *,
    client: openai.OpenAI | None = None,
    output_files: Iterable[str | Path] | None = None,
    error_files: Iterable[str | Path] | None = None,
    prices: PricesArg = None,
) -> pd.DataFrame:
    """One row per requested ``custom_id`` with its status, answer fields, tokens and cost.

    ``jobs`` is the frame from ``submit``/``poll``/``resume``: its output and error files are
    downloaded (streamed, cached in the home, retried when cut). With ``jobs=None`` pass local
    files, e.g. downloaded from the OpenAI dashboard. Nothing is dropped: a request in neither file
    is ``missing``; broken lines are counted in ``attrs["malformed_lines"]`` and logged.

    >>> results = aggregate_df(None, requests, output_files=["out.jsonl"], error_files=["err.jsonl"])  # doctest: +SKIP
    >>> results["status"].value_counts()  # doctest: +SKIP
    """
    collector = Collector(requests)  # checks the requests before anything is downloaded
    sources: list[tuple[str, Path, str | None, str | None]] = []
    for kind, paths in (("output", output_files), ("error", error_files)):
        for p in paths or ():
            path = Path(p)
            if not path.is_file():
                raise InputError(f"{kind}_files: {path} does not exist or is not a file")
            sources.append((kind, path, None, None))
    gone: dict[str, tuple[str | None, list[tuple[str, str]]]] = {}
    backend = None
    if jobs is not None:
        sources[:0] = _job_files(jobs, client, gone)
        backend = _jobs_backend(jobs, client)
    with gc_paused():
        stats = [
            collector.read_file(path, batch_id=b, kind=k, file_id=f) for k, path, b, f in sources
        ]
        for batch_id, (shard_path, files) in gone.items():
            stats += collector.files_gone(batch_id=batch_id, files=files, shard_path=shard_path)
        out = collector.frame(requests, prices=prices, batch=True, backend=backend)
        # freed while the GC is still paused, so it never scans the row tuples
        del collector
    out.attrs["files"] = stats
    malformed, unknown = out.attrs["malformed_lines"], out.attrs["unknown_custom_ids"]
    if malformed or unknown:
        log.warning(
            "aggregate_df: %d malformed line(s), %d line(s) for custom_ids not in the requests; see attrs['files']",
            malformed,
            unknown,
        )
    return out


def _job_files(
    jobs: pd.DataFrame, client: Any, gone: dict[str, tuple[str | None, list[tuple[str, str]]]]
) -> Iterator[tuple[str, Path, str, str]]:
    """Each finished batch's files, downloaded; a file the server no longer has goes to ``gone``
    (its requests stay rows, ``missing`` with the reason) instead of failing the whole frame."""
    from portfolio_batch._download import download_file

    missing = {"batch_id", "status"} - set(jobs.columns)
    if missing:
        raise InputError(
            f"jobs frame lacks column(s) {sorted(missing)}; pass the frame submit()/poll()/resume() returned"
        )
    if client is None:
        from portfolio_batch._backend import client_for

        client = client_for(_jobs_backend(jobs, None, default=False))
    for row in jobs.to_dict("records"):
        batch_id = row.get("batch_id")
        if not _present(batch_id):
            log.warning(
                "shard %s was never submitted (status %s); its requests are missing",
                row.get("shard"),
                row.get("status"),
            )
            continue
        out_id, err_id, status = (
            row.get("output_file_id"),
            row.get("error_file_id"),
            row.get("status"),
        )
        done = int(row.get("completed") or 0)
        # OpenAI can say completed before it names the output file: look again for it
        if status not in TERMINAL or (not _present(out_id) and (done or not _present(err_id))):
            batch = client.batches.retrieve(batch_id)
            out_id, err_id, status = batch.output_file_id, batch.error_file_id, batch.status
            done = int(getattr(batch.request_counts, "completed", 0) or 0)
        if status == "completed" and done and not _present(out_id):
            log.warning(
                "batch %s reports %d completed request(s) but no output file yet: they are "
                "missing here; run aggregate_df again in a few minutes (OpenAI can name the "
                "file a poll or two after the batch completes)",
                batch_id,
                done,
            )
        if status not in TERMINAL:
            log.warning(
                "batch %s is still %s: its unfinished requests are missing; poll() it first",
                batch_id,
                status,
            )
        for kind, file_id in (("output", out_id), ("error", err_id)):
            if isinstance(file_id, str) and file_id:
                try:
                    path = download_file(file_id, client=client)
                except ResultFileGoneError as exc:
                    if str(batch_id) not in gone:  # once per batch, not per file
                        _check_batch_visible(client, str(batch_id))
                    log.warning("batch %s, %s %s", batch_id, kind, exc)
                    shard = row.get("path")
                    entry = gone.setdefault(str(batch_id), (shard if _present(shard) else None, []))
                    entry[1].append((kind, file_id))
                    continue
                except DownloadError as exc:
                    raise DownloadError(f"batch {batch_id}, {kind} {exc}") from exc
                yield kind, path, str(batch_id), file_id


def _jobs_backend(jobs: pd.DataFrame, client: Any, *, default: bool = True) -> str | None:
    """Where the jobs' batches ran: their ``backend`` column (as submitted), else the client's
    (``default=False``: else None)."""
    from portfolio_batch._backend import backend_name, client_for

    names = jobs["backend"].dropna().astype(str).unique().tolist() if "backend" in jobs else []
    if names:
        return ", ".join(sorted(names))
    if not default:
        return None
    return backend_name(client if client is not None else client_for(None))


def _check_batch_visible(client: Any, batch_id: str) -> None:
    """A 404 on a result file means it is gone only if this client sees its batch: with another
    key, project or server every file is a 404, and resending would pay twice."""
    try:
        client.batches.retrieve(batch_id)
    except openai.NotFoundError as exc:
        raise DownloadError(
            f"batch {batch_id} is not visible with this client (404), so its result files are "
            "not either: it was made with another API key, project or server. Pass the client "
            "that submitted it (client=...)."
        ) from exc
    except openai.APIError as exc:
        raise DownloadError(
            f"batch {batch_id}: a result file answered 404, and checking the batch itself "
            f"failed ({type(exc).__name__}: {exc}); run aggregate_df again."
        ) from exc


def _present(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _loads_or_none(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def custom_ids(requests: pd.DataFrame) -> list[str]:
    """The requests' custom_ids (column or index), checked to be non-empty strings."""
    if "custom_id" in requests.columns:
        ids = requests["custom_id"].tolist()
    elif requests.index.name == "custom_id":
        ids = requests.index.tolist()
    else:
        raise InputError(
            "requests frame has no custom_id column or index; build it with build_requests()"
        )
    if pd.api.types.infer_dtype(ids, skipna=False) != "string" or "" in ids:
        n = next(n for n, cid in enumerate(ids) if not (isinstance(cid, str) and cid))
        raise InputError(f"requests row {n}: custom_id {ids[n]!r} is not a non-empty string")
    return ids


def _validators(requests: pd.DataFrame) -> tuple[Validator | None, list[Validator | None] | None]:
    """(the validator of every row, None) or (None, one per row): from the frame's schema, else
    from each body's response_format."""
    schema = requests.attrs.get("schema")
    if schema is not None:
        return validator_for(schema), None
    if "body" not in requests.columns:
        return None, None
    per_row = [validator_for(schema_of_body(b)) for b in requests["body"].tolist()]
    distinct = set(map(id, per_row))
    if len(distinct) == 1:
        return per_row[0] if per_row else None, None
    return None, per_row


def _provenance(
    models: np.ndarray, requested: np.ndarray, backend: str | None
) -> tuple[str | None, np.ndarray]:
    """(engine, the model each row is priced on), with ``models`` made what answered.

    The local server's answers are ``local:<engine>`` (from their system_fingerprint, see
    ``decode.row_of``; every answer of the embedded server, whose backend name has the engine).
    They are priced as the requested model, what the run would cost at OpenAI; other answers on
    the model that answered (a dated snapshot, or Azure's model behind a deployment name).
    """
    from portfolio_batch._backend import engine_of

    answered = models != None  # noqa: E711  (elementwise: rows whose response names a model)
    # one embedded server answered everything (jobs from several backends are joined by ", ")
    engines = {engine_of(b) for b in (backend or "").split(", ")}
    engine = engines.pop() if len(engines) == 1 else None
    if engine is not None:
        models[answered] = f"local:{engine}"
    names = set(models[answered].tolist())
    local = sorted(m for m in names if isinstance(m, str) and m.startswith("local:"))
    priced = np.where(answered, models, requested)
    for name in local:
        priced[models == name] = requested[models == name]
    if engine is None and local:
        engine = ", ".join(m.removeprefix("local:") for m in local)
    return engine, priced


def _request_models(requests: pd.DataFrame) -> list[str | None]:
    model = requests.attrs.get("model")
    if isinstance(model, str) and model:
        return [model] * len(requests)
    if "body" not in requests.columns:
        return [None] * len(requests)
    return [b.get("model") if isinstance(b, dict) else None for b in requests["body"].tolist()]


def _obj(values: Any) -> pd.Series:
    """An object column: pandas 3 would convert text to its str dtype, at 20-30 ms a column.
    ``copy=False``: the arrays are built here and owned by nobody else."""
    return pd.Series(values, dtype=object, copy=False)


def _typed(values: Any, dtype: str) -> Any:
    if dtype == "object":
        return _obj(values)
    if dtype == "Int64":
        try:
            return _int_column(np.asarray(values, dtype=float))
        except (TypeError, ValueError):  # not all numbers: the general conversion below says why
            pass
    try:
        return pd.array(values, dtype=cast(Any, dtype))
    except (
        TypeError,
        ValueError,
    ):  # two schemas disagree on a field's type: keep the values as they are
        return values


def _pricing_at(backend: str | None) -> str | None:
    """The ``provider=`` the answers of ``backend`` (one name, or several joined by ", ") are
    priced at: its provider's when all ran at one that has its own price table entries."""
    from portfolio_batch._backend import provider_of_backend
    from portfolio_batch._cost import pricing_provider

    found = {pricing_provider(provider_of_backend(b)) for b in (backend or "").split(", ")}
    return found.pop() if len(found) == 1 else None


def _cost(
    models: np.ndarray,
    tokens: dict[str, np.ndarray],
    *,
    prices: Any,
    batch: bool,
    provider: str | None = None,
) -> np.ndarray:
    """Actual cost per row: priced once per model, over whole token arrays. Reasoning tokens are
    inside completion_tokens (OpenAI's usage), so they are priced as output once, not added."""
    prompt, completion, cached, written = (
        np.nan_to_num(tokens[c])
        for c in ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens")
    )
    billed = (prompt > 0) | (completion > 0)
    names = set(models[billed].tolist())
    if len(names) == 1:  # the usual case: one model; rows without usage cost 0 anyway
        return _priced(
            names.pop(),
            prompt,
            completion,
            cached,
            written,
            prices=prices,
            batch=batch,
            provider=provider,
        )
    cost = np.zeros(len(models))
    for model in names:
        mask = billed & (models == model)
        cost[mask] = _priced(
            model,
            prompt[mask],
            completion[mask],
            cached[mask],
            written[mask],
            prices=prices,
            batch=batch,
            provider=provider,
        )
    return cost


def _priced(
    model: Any,
    prompt: np.ndarray,
    completion: np.ndarray,
    cached: np.ndarray,
    written: np.ndarray,
    *,
    prices: Any,
    batch: bool,
    provider: str | None = None,
) -> np.ndarray:
    from portfolio_batch._cost import cost_usd

    try:
        if not isinstance(model, str) or not model:
            raise PricingError(
                "the responses name no model; pass the requests frame they came from"
            )
        return np.asarray(
            cost_usd(
                model,
                prompt,
                completion,
                cached,
                cache_write_tokens=written,
                batch=batch,
                prices=prices,
                provider=provider,
            ),
            dtype=float,
        )
    except PricingError as exc:
        billed = int(((prompt > 0) | (completion > 0)).sum())
        if billed:
            log.warning("cost_usd is NaN for %d row(s) of model %r: %s", billed, model, exc)
        return np.where((prompt > 0) | (completion > 0), np.nan, 0.0)


def need_columns(df: Any, name: str, columns: Iterable[str]) -> None:
    """Raise an InputError naming what ``df`` (called ``name`` in the message) lacks."""
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"{name} must be a DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(
            f"{name} lacks column(s) {missing}; pass the frame aggregate_df() or run_sync() returned"
        )
