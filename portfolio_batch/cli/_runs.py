"""What a CLI run leaves in ``--out`` so another process can finish it.

``analyze-risk`` writes the request shards and ``run.json`` (run id, model, key column, column
order, ``--out``) into ``--out/requests/RUN_ID/``, one directory per run so a later run into the
same ``--out`` leaves them alone; the registry records the shard paths and their sha256. ``jobs resume`` / ``jobs results``
rebuild the requests frame from those shard files (custom_id, method, url, body, and the row's
fields from the last line of the user message), so aggregation after a restart sees the same
requests as the original run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from portfolio_batch._contract import REQUEST_COLUMNS
from portfolio_batch.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "RUN_FILE",
    "check_shards",
    "find_run",
    "load_portfolio_file",
    "load_run_info",
    "requests_from_shards",
    "resolve_id",
    "run_out_dir",
    "shard_dir",
    "short_id",
    "write_run_info",
]

RUN_FILE = "run.json"
_CHUNK = 1 << 20


def load_portfolio_file(path: Path) -> pd.DataFrame:
    """``pb.load_portfolio``, with unreadable files (binary, empty, broken CSV or Parquet)
    reported as one line naming the file, like every other input error.

    >>> load_portfolio_file(Path("testdata/portfolio.csv"))  # doctest: +SKIP
    """
    import pandas as pd

    import portfolio_batch as pb

    kind = "Parquet" if path.suffix.lower() in (".parquet", ".pq") else "CSV"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            frame = pb.load_portfolio(path)
    except pd.errors.EmptyDataError:
        raise InputError(
            f"{path} is empty; a portfolio needs a header line (ticker,weight,...) and one line per position."
        ) from None
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(
            f"{path} is not a readable {kind} file ({reason}); pass a UTF-8 CSV or a Parquet "
            "file with ticker and weight columns."
        ) from None
    except Exception as exc:
        # pyarrow's errors for a file that is not Parquet have no common base we can import cheaply.
        if type(exc).__module__.startswith("pyarrow"):
            raise InputError(
                f"{path} is not a readable {kind} file ({exc}); pass a UTF-8 CSV or a Parquet file "
                "with ticker and weight columns."
            ) from None
        raise
    notes = []
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            notes.append(str(warning.message))
        else:  # not ours to reword: handed on as it came
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    _show_portfolio_notes(frame, notes)
    return frame


def _show_portfolio_notes(frame: pd.DataFrame, notes: list[str]) -> None:
    """load_portfolio's warnings (a sum far from 1) and its shorts, one line each on stderr: a
    Python warning's file:line prefix means nothing to a CLI user."""
    from rich.text import Text

    from portfolio_batch.cli._console import err

    for note in notes:
        err.print(Text.assemble(("Warning:", "bold yellow"), " ", note), soft_wrap=True)
    shorts = int(frame.attrs.get("shorts", 0))
    if shorts and not notes:  # the warning already gives gross and net
        weights = frame["weight"]
        err.print(
            f"{shorts} short position{'s' if shorts != 1 else ''} (negative weights): gross "
            f"exposure {float(weights.abs().sum()):.2f}, net {float(weights.sum()):.2f}."
        )


def shard_dir(out_dir: Path, run_id: str) -> Path:
    """``out_dir/requests/<run_id>/``, created: where one run's shards and ``run.json`` go.

    >>> shard_dir(Path("demo-out"), "run-20261115-103000-ab12cd")  # doctest: +SKIP
    PosixPath('demo-out/requests/run-20261115-103000-ab12cd')
    """
    from portfolio_batch._home import writable_dir

    return writable_dir(out_dir / "requests" / run_id, what="--out")


def run_out_dir(shard_path: str | Path) -> Path:
    """The ``--out`` of the run whose shard is ``shard_path`` (recorded in ``run.json``), or the
    shard's directory for a run submitted from Python."""
    here = Path(shard_path).parent
    recorded = load_run_info(here).get("out")
    return Path(recorded) if recorded else here


def write_run_info(
    directory: Path,
    *,
    run_id: str | None,
    requests: pd.DataFrame,
    mode: str,
    portfolio: Path,
    out_dir: Path | None = None,
    review: dict[str, Any] | None = None,
) -> Path:
    """Record the run in ``directory/run.json``, next to its shards (never the API key: nothing secret is in here).

    ``review`` holds what its report needs later: the portfolio's ``name``, ``as_of``, the
    input file's ``portfolio_sha256`` (the file may change before the report is rebuilt) and the
    ``currency`` / ``fx_rate`` / ``fx_date`` to show costs in."""
    data_columns = [c for c in requests.columns if c not in REQUEST_COLUMNS]
    attrs = requests.attrs
    info = {
        "run_id": run_id,
        "mode": mode,
        "portfolio": str(portfolio),
        **(review or {}),
        "out": str(out_dir) if out_dir is not None else None,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": attrs.get("model"),
        "endpoint": attrs.get("endpoint"),
        "key": attrs.get("key"),
        "prompt_version": attrs.get("prompt_version"),
        "columns": data_columns,
        "n_requests": len(requests),
    }
    path = directory / RUN_FILE
    path.write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2, default=str))
    return path


def load_run_info(directory: Path) -> dict[str, Any]:
    """``run.json`` next to the shards, or ``{}`` for a run submitted from Python."""
    path = directory / RUN_FILE
    if not path.is_file():
        return {}
    try:
        info = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise InputError(
            f"{path} is not valid JSON ({exc}); delete it to rebuild from the shards."
        ) from exc
    return info if isinstance(info, dict) else {}


def _row_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The row's fields: the user message's last line is the row as one JSON object."""
    messages = body.get("messages") or []
    user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    content = user.get("content") if user else None
    if not isinstance(content, str):
        return {}
    last = content.rstrip().rsplit("\n", 1)[-1]
    try:
        fields = orjson.loads(last)
    except orjson.JSONDecodeError:
        return {}
    return fields if isinstance(fields, dict) else {}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_shards(jobs: pd.DataFrame) -> None:
    """Refuse shard files that are not the bytes the run uploaded (the registry's ``sha256``).

    Another run into the same ``--out`` rewrites ``requests-*.jsonl``; rebuilding this run's
    requests from those would match its results to the wrong positions.

    >>> check_shards(pb.resume("run-20261115-103000-ab12cd"))  # doctest: +SKIP
    """
    import pandas as pd

    run_id = jobs["run_id"].iloc[0] if "run_id" in jobs and len(jobs) else None
    run = f"run {run_id}" if run_id is not None else "this run"
    for row in jobs.sort_values("shard").to_dict("records"):
        path, expected = row.get("path"), row.get("sha256")
        # A batch adopted from the server without our metadata has nothing to compare with.
        if pd.isna(path) or pd.isna(expected) or not expected or not Path(path).is_file():
            continue
        if _file_sha256(Path(path)) != expected:
            raise InputError(
                f"request shard {path} (shard {row['shard']} of {run}) is not the file that run "
                f"uploaded: its sha256 differs from the registry's {str(expected)[:12]}…, so it "
                "was overwritten, most likely by a later run with the same --out. Its results "
                "are still on the server, but cannot be matched to positions without the original "
                "shard: restore that file, or run analyze-risk again on the portfolio with its "
                "own --out directory."
            )


def requests_from_shards(paths: list[str], *, info: dict[str, Any] | None = None) -> pd.DataFrame:
    """Rebuild a requests frame (design.md's columns and attrs) from the JSONL shard files.

    >>> requests_from_shards(["demo-out/requests-00000.jsonl"])  # doctest: +SKIP
    """
    import pandas as pd

    info = info or {}
    records: list[dict[str, Any]] = []
    fields: list[dict[str, Any]] = []
    for path in paths:
        if not Path(path).is_file():
            raise InputError(
                f"request shard {path} is missing; the run's results cannot be matched to its "
                "positions without it. Restore the --out directory of the original run."
            )
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    item = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise InputError(f"{path} line {number} is not valid JSON: {exc}") from exc
                records.append({name: item.get(name) for name in REQUEST_COLUMNS})
                fields.append(_row_fields(item.get("body") or {}))
    if not records:
        raise InputError(f"the request shards {paths} hold no requests.")

    data = pd.DataFrame.from_records(fields)
    order = [c for c in info.get("columns") or [] if c in data.columns]
    data = data[order + [c for c in data.columns if c not in order]]
    frame = pd.concat([pd.DataFrame.from_records(records), data], axis=1)
    frame.index = pd.Index(frame["custom_id"], name="custom_id")

    first = records[0]
    body = first["body"] or {}
    schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema")
    frame.attrs.update(
        model=info.get("model") or body.get("model"),
        endpoint=info.get("endpoint") or first["url"],
        key=info.get("key") or (data.columns[0] if len(data.columns) else None),
        prompt_version=info.get("prompt_version") or str(first["custom_id"]).rsplit("-", 1)[-1],
        schema=schema,
    )
    return frame


_RUN_ID = re.compile(r"^(?:run|sync)-\d{8}-\d{6}-([0-9a-f]+)$")


def short_id(ident: Any) -> str:
    """The part of an id a person reads and types: a run id's random suffix
    (``run-20261115-103000-ab12cd`` → ``ab12cd``), a batch id's first 8 characters after
    ``batch_``; other ids as they are.

    >>> short_id("run-20261115-103000-ab12cd"), short_id("batch_3f9a1c2e77d0b4a1")
    ('ab12cd', '3f9a1c2e')
    """
    text = "" if ident is None else str(ident)
    if m := _RUN_ID.match(text):
        return m.group(1)
    if text.startswith("batch_") and len(text) > 14:
        return text[6:14]
    return text


def _matches(ident: str, full: str) -> bool:
    """An id given by its start, or by the start of its short form (``ab1`` for
    ``run-...-ab12cd``, ``3f9a`` for ``batch_3f9a...``)."""
    if not ident or not full:
        return False
    tail = _RUN_ID.match(full)
    long_short = tail.group(1) if tail else full.removeprefix("batch_")
    return full.startswith(ident) or long_short.startswith(ident)


def resolve_id(ident: str, ids: list[str], *, what: str = "run") -> str | None:
    """The one id of ``ids`` that ``ident`` names (exactly, or as a unique prefix of the id or
    of its short form); None when none does; an ``InputError`` listing them when several do."""
    ident = ident.strip()
    if ident in ids:
        return ident
    found = list(dict.fromkeys(i for i in ids if _matches(ident, i)))
    if len(found) > 1:
        shown = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
        raise InputError(
            f"{ident!r} matches {len(found)} {what}s ({shown}); give more of the id "
            "(`portfolio-batch jobs list` shows them)."
        )
    return found[0] if found else None


def find_run(ident: str) -> pd.DataFrame:
    """The registry's jobs of the run ``ident``: a run id or one of its batch ids, whole or a
    unique prefix (of the id, or of the short id ``jobs list`` shows)."""
    import portfolio_batch as pb
    from portfolio_batch._home import home

    jobs = pb.jobs()
    if len(jobs):
        run_ids = [str(r) for r in dict.fromkeys(jobs["run_id"])]
        run_id = resolve_id(ident, run_ids)
        if run_id is None:
            batch_ids = [str(b) for b in dict.fromkeys(jobs["batch_id"].dropna())]
            batch = resolve_id(ident, batch_ids, what="batch")
            if batch is not None:
                run_id = str(jobs.loc[jobs["batch_id"] == batch, "run_id"].iloc[0])
        if run_id is not None:
            return jobs[jobs["run_id"] == run_id].sort_values("shard").reset_index(drop=True)
    raise InputError(
        f"no run or batch {ident!r} in the registry at {home()}; list them with "
        "`portfolio-batch jobs list` (and check PORTFOLIO_BATCH_HOME)."
    )
