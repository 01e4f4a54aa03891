"""Reviewed runs, kept so the next report of the same portfolio can say what changed.

``pb.report`` records each run it reports on: a snapshot of its results (and cost estimate) in
``home()/reviews/`` and a row in the registry's ``reviews`` table naming the portfolio. "The same
portfolio" is the same ``portfolio=`` name (the CLI uses the file name), or, for an unnamed one,
the same set of position keys. The previous run is the latest such run made before this one.

    >>> from portfolio_batch import _history as history
    >>> last = history.previous_results(results, portfolio="Core equity")   # doctest: +SKIP
    >>> results, costs, row = history.load("run-20261115-103000-ab12cd")   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from portfolio_batch._home import home
from portfolio_batch._registry import open_registry
from portfolio_batch.errors import InputError
from portfolio_batch.review import frame_sha256, key_column

__all__ = [
    "SNAPSHOT_ATTRS",
    "file_sha256",
    "find_run_id",
    "input_columns",
    "input_sha256",
    "keys_sha256",
    "load",
    "previous_results",
    "record",
    "run_time",
]

# results.attrs kept with a snapshot (JSON-safe; aggregate_df's per-file stats are left out)
SNAPSHOT_ATTRS = (
    "run_id",
    "portfolio",
    "source",
    "input_sha256",
    "as_of",
    "run_at",
    "backend",
    "engine",
    "simulated",
    "mode",
    "key",
    "prompt_version",
    "schema",
    "system_prompt",
    "parameters",
)
_ANSWER_START = "status"  # aggregate_df: custom_id, the input columns, then status, ...
_CHUNK = 1 << 20


def reviews_dir() -> Path:
    return home() / "reviews"


def _safe(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", run_id)


def input_columns(results: pd.DataFrame) -> list[str]:
    """The columns that came from the portfolio: those between ``custom_id`` and ``status``."""
    cols = [c for c in results.columns if c != "custom_id"]
    return cols[: cols.index(_ANSWER_START)] if _ANSWER_START in cols else []


def keys_sha256(results: pd.DataFrame) -> str:
    """The hash of the sorted position keys: an unnamed portfolio's identity."""
    key = key_column(results)
    keys = sorted(results[key].astype(str)) if key else sorted(map(str, results.index))
    return hashlib.sha256("\x1f".join(keys).encode()).hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def input_sha256(results: pd.DataFrame, source: str | os.PathLike[str] | None = None) -> str:
    """The sha256 recorded with the results (``attrs["input_sha256"]``: the file as it was when
    the run was made), else of the input file ``source``, else of the results' portfolio
    columns."""
    recorded = results.attrs.get("input_sha256")
    if recorded:
        return str(recorded)
    if source is not None and Path(source).is_file():
        return file_sha256(source)
    return frame_sha256(results, columns=input_columns(results))


def find_run_id(results: pd.DataFrame, jobs: pd.DataFrame | None = None) -> str | None:
    """The run the results belong to: ``jobs``' run id, else ``attrs["run_id"]``, else the
    registry's run of their batch ids; None for results no run recorded (``run_sync``)."""
    if jobs is not None and "run_id" in jobs.columns:
        ids = [str(v) for v in pd.unique(jobs["run_id"].dropna())]
        if len(ids) == 1:
            return ids[0]
    if results.attrs.get("run_id"):
        return str(results.attrs["run_id"])
    if "batch_id" in results.columns:
        batches = [str(b) for b in pd.unique(results["batch_id"].dropna())]
        if batches:
            with open_registry() as reg:
                runs = {
                    row["run_id"] for b in batches[:50] if (row := reg.batch(b)) and row["run_id"]
                }
            if len(runs) == 1:
                return str(runs.pop())
    return None


def run_time(results: pd.DataFrame, jobs: pd.DataFrame | None = None) -> float:
    """When the run was made (UNIX time): its last batch's creation (a run that re-used an
    earlier run's unchanged shards is as new as the batches it made), else ``attrs["run_at"]``,
    else now."""
    if jobs is not None and "created_at" in jobs.columns:
        created = pd.to_datetime(jobs["created_at"], utc=True, errors="coerce").dropna()
        if len(created):
            return float(created.max().timestamp())
    if results.attrs.get("run_at"):
        return float(results.attrs["run_at"])
    return time.time()


def _jsonable(frame: pd.DataFrame) -> pd.DataFrame:
    """Dict cells (e.g. a raw body) as JSON text: parquet wants one type per column."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object and out[col].map(lambda v: isinstance(v, dict)).any():
            out[col] = out[col].map(
                lambda v: orjson.dumps(v, default=str).decode() if isinstance(v, dict) else v
            )
    return out


def _snapshot_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    kept = {k: attrs[k] for k in SNAPSHOT_ATTRS if attrs.get(k) is not None}
    # only what survives a JSON round trip (parquet keeps attrs as JSON)
    return orjson.loads(orjson.dumps(kept, default=str))  # type: ignore[no-any-return]


def record(
    results: pd.DataFrame,
    costs: pd.DataFrame | None = None,
    *,
    run_id: str,
    portfolio: str | None,
    source: str | None,
    input_sha256: str,
    as_of: str | None,
    run_at: float,
) -> Path:
    """Keep a snapshot of ``results`` (and ``costs``) and register it as ``run_id``'s review of
    ``portfolio``; a later call for the same run replaces it. Returns the snapshot's path."""
    folder = reviews_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_safe(run_id)}.parquet"
    frame = _jsonable(results)
    frame.attrs = _snapshot_attrs(  # type: ignore[assignment]
        {
            **{str(k): v for k, v in results.attrs.items()},
            "run_id": run_id,
            "portfolio": portfolio,
            "source": source,
            "input_sha256": input_sha256,
            "as_of": as_of,
            "run_at": run_at,
        }
    )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    cost_path = path.with_suffix(".costs.parquet")
    if costs is not None:
        c = _jsonable(costs)
        c.attrs = orjson.loads(orjson.dumps(dict(costs.attrs), default=str))
        c.to_parquet(cost_path)
    else:
        cost_path.unlink(missing_ok=True)
    with open_registry() as reg:
        reg.record_review(
            run_id,
            portfolio=portfolio,
            keys_sha256=keys_sha256(results),
            input_sha256=input_sha256,
            source=source,
            as_of=as_of,
            run_at=run_at,
            results_path=str(path),
            n_positions=len(results),
        )
    return path


def _read(path: str | Path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    if "custom_id" in frame.columns:
        frame.index = pd.Index(frame["custom_id"], name="custom_id")
    return frame


def load(run_id: str) -> tuple[pd.DataFrame, pd.DataFrame | None, dict[str, Any]]:
    """The results, cost estimate (or None) and registry row of a reviewed run.

    >>> results, costs, row = load("run-20261115-103000-ab12cd")   # doctest: +SKIP
    """
    with open_registry() as reg:
        row = reg.review(run_id)
    if row is None or not Path(row["results_path"]).is_file():
        where = "has no review" if row is None else f"has lost its snapshot {row['results_path']}"
        raise InputError(
            f"run {run_id} {where} in {reviews_dir()}; a run is kept there when its report is "
            "written (pb.report, analyze-risk, jobs results). Rebuild it with "
            f"`portfolio-batch jobs results {run_id}`."
        )
    results = _read(row["results_path"])
    cost_path = Path(row["results_path"]).with_suffix(".costs.parquet")
    costs = pd.read_parquet(cost_path) if cost_path.is_file() else None
    return results, costs, row


def reviewed_runs(portfolio: str | None = None) -> list[dict[str, Any]]:
    """Every reviewed run (registry rows), newest first; one portfolio's when named."""
    with open_registry() as reg:
        rows = reg._rows(
            "SELECT * FROM reviews"
            + (" WHERE portfolio = ?" if portfolio else "")
            + " ORDER BY run_at DESC",
            (portfolio,) if portfolio else (),
        )
    return rows


def previous_results(
    results: pd.DataFrame,
    *,
    portfolio: str | None,
    run_id: str | None = None,
    run_at: float | None = None,
) -> pd.DataFrame | None:
    """The results of the latest run of the same portfolio made before this one (``run_at``,
    default now), other than ``run_id``; None when there is none.

    >>> previous_results(results, portfolio="Core equity")   # doctest: +SKIP
    """
    with open_registry() as reg:
        rows = reg.runs_for_portfolio(
            portfolio=portfolio,
            keys_sha256=None if portfolio is not None else keys_sha256(results),
            before=run_at if run_at is not None else time.time(),
            exclude=run_id,
        )
    for row in rows:
        if Path(row["results_path"]).is_file():
            return _read(row["results_path"])
    return None
