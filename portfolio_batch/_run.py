"""Runs in a notebook: ``start`` sends a run and returns a ``Run`` that shows itself as a live card
and keeps watching in the background; ``runs`` lists runs from the registry; ``attach`` picks one
up again after a kernel restart.

    >>> import portfolio_batch as pb
    >>> run = pb.start(requests, budget_usd=1.0, canary=0.05)   # doctest: +SKIP
    >>> results = run.wait().results()                          # doctest: +SKIP
    >>> pb.runs()                                               # doctest: +SKIP
    >>> run = pb.attach("run-20261201-101500-ab12cd")           # doctest: +SKIP

The watcher is a daemon thread that only sets widget values (traits). It never prints, never
displays and never logs to the notebook (its log records are shown in the card instead), because
ipykernel 6 and 7 route output from threads differently and a progress bar that prints or displays
from a thread breaks on one of them. The saved HTML of the card is refreshed from the kernel's
main thread only: by ``wait()``, ``results()`` and after each cell the user runs.

Everything about a run is in the job registry: its shards and batches, and its plan (table
``run_plans``: the (run_id, shard) pairs it watches, where its requests frame is saved, a canary's
verdict and the shards held back behind it). A new kernel therefore attaches to a run with
``attach(run_id)`` and carries on: the same batches, none sent again.
"""

from __future__ import annotations

import contextlib
import html
import logging
import math
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack, cast

import numpy as np
import openai
import orjson
import pandas as pd

from portfolio_batch._contract import TERMINAL
from portfolio_batch._cost import PricesArg
from portfolio_batch._registry import Registry, open_registry
from portfolio_batch.errors import (
    BatchFailedError,
    BudgetExceededError,
    InputError,
    PollTimeoutError,
    PortfolioBatchError,
    RegistryError,
    SubmitError,
)

if TYPE_CHECKING:
    from portfolio_batch._widgets import RunView

__all__ = ["CanaryHeldError", "Run", "attach", "runs", "start"]


class StartOptions(TypedDict, total=False):
    """The options of ``start`` that ``Run.retry_failed`` passes on to the retry's run."""

    budget_usd: float | None
    canary: float | None
    canary_max_failed: float
    out_dir: str | Path | None
    metadata: dict[str, Any] | None
    max_enqueued_tokens: int | None
    prices: PricesArg
    title: str | None
    display: bool | None
    watch: bool | None
    stall_after: float | None


log = logging.getLogger(__name__)

# Errors after which the watcher tries again at its next round instead of stopping.
_TRANSIENT = (
    openai.APIConnectionError,
    openai.RateLimitError,
    openai.InternalServerError,
    SubmitError,
)
# Rounds in a row that may fail that way before the watcher stops (and says so on the card).
_MAX_FAILURES = 5
# Between two rounds of the watcher: at least this (a card needs no more), at most the backend's
# largest poll interval.
_MIN_INTERVAL_S = 0.25
# How many of the worst-scored rows the card's results table shows.
_TOP_ROWS = 10
# A run with no movement for this many largest poll intervals is flagged as stalled.
_STALL_INTERVALS = 30
_PLAN_VERSION = 1


class CanaryHeldError(BatchFailedError):
    """The canary shard's answers were not good enough, so the rest of the run was not sent."""


# -- the plan, in the registry ----------------------------------------------------------------------
def _read_plan(reg: Registry, run_id: str) -> dict[str, Any] | None:
    try:
        row = reg.conn.execute("SELECT plan FROM run_plans WHERE run_id = ?", (run_id,)).fetchone()
    except sqlite3.Error as exc:
        raise RegistryError(
            f"Cannot read run {run_id} from the job registry {reg.path}: {exc}"
        ) from exc
    return orjson.loads(row[0]) if row else None


def _all_plans(reg: Registry) -> list[dict[str, Any]]:
    try:
        rows = reg.conn.execute("SELECT plan FROM run_plans ORDER BY created_at DESC").fetchall()
    except sqlite3.Error as exc:
        raise RegistryError(f"Cannot read the runs in the job registry {reg.path}: {exc}") from exc
    return [orjson.loads(r[0]) for r in rows]


def _write_plan(reg: Registry, plan: dict[str, Any]) -> None:
    try:
        with reg.transaction() as conn:
            conn.execute(
                """INSERT INTO run_plans (run_id, created_at, updated_at, plan) VALUES (?, ?, ?, ?)
                   ON CONFLICT (run_id) DO UPDATE SET plan = excluded.plan,
                   updated_at = excluded.updated_at""",
                (plan["run_id"], plan["created_at"], time.time(), orjson.dumps(plan).decode()),
            )
    except sqlite3.Error as exc:
        raise RegistryError(
            f"Cannot write run {plan['run_id']} to the job registry {reg.path}: {exc}"
        ) from exc


def _update_plan(run_id: str, change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """Read, change and write a plan in one write transaction (another kernel or a button click
    may change it at the same time); returns the plan as written."""
    with open_registry() as reg:
        try:
            with reg.transaction() as conn:
                row = conn.execute(
                    "SELECT plan FROM run_plans WHERE run_id = ?", (run_id,)
                ).fetchone()
                if row is None:
                    raise RegistryError(f"Run {run_id} has no plan in the job registry {reg.path}.")
                plan: dict[str, Any] = orjson.loads(row[0])
                change(plan)
                conn.execute(
                    "UPDATE run_plans SET plan = ?, updated_at = ? WHERE run_id = ?",
                    (orjson.dumps(plan).decode(), time.time(), run_id),
                )
        except sqlite3.Error as exc:
            raise RegistryError(
                f"Cannot write run {run_id} to the job registry {reg.path}: {exc}"
            ) from exc
    return plan


def _records(manifest: pd.DataFrame) -> list[dict[str, Any]]:
    # to_json turns numpy numbers and NaN into JSON; the registry stores plain JSON only
    return list(orjson.loads(manifest.to_json(orient="records")))


def _manifest_of(part: dict[str, Any]) -> pd.DataFrame:
    frame = pd.DataFrame(part["manifest"])
    frame.attrs = dict(part.get("attrs") or {})
    return frame


# -- inputs ---------------------------------------------------------------------------------------
def _split_input(data: Any, shard_dir: Path) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    """(requests frame or None, manifest) of what ``start`` was given."""
    from portfolio_batch._jsonl import to_jsonl

    if not isinstance(data, pd.DataFrame):
        raise InputError(
            f"start() takes a requests frame from build_requests() or a manifest from "
            f"to_jsonl(), not {type(data).__name__}."
        )
    if data.empty:
        raise InputError("start() got an empty frame: there is nothing to send.")
    if "body" in data.columns:
        return data, to_jsonl(data, shard_dir)
    if {"sha256", "path", "shard"} <= set(data.columns):
        return None, data
    raise InputError(
        "start() needs a requests frame (columns custom_id, method, url, body, from "
        "build_requests()) or a manifest (columns shard, path, sha256, from to_jsonl()); "
        f"got columns {list(map(str, data.columns))[:8]}."
    )


def requests_from_shards(paths: Iterable[str]) -> pd.DataFrame:
    """A requests frame (custom_id, method, url, body) read back from shard files, for a run
    whose requests frame was not saved (started from a manifest, or by ``pb.submit``).

    >>> requests_from_shards(["out/requests-00000.jsonl"])   # doctest: +SKIP
    """
    from portfolio_batch._jsonl import iter_jsonl

    rows: list[dict[str, Any]] = []
    for path in dict.fromkeys(str(p) for p in paths if isinstance(p, str) and p):
        if not Path(path).is_file():
            raise InputError(
                f"The shard file {path} is gone, so this run's requests cannot be read back; "
                "pass them: run.results(requests=...)."
            )
        # to_jsonl wrote these: one request object a line
        rows.extend(cast("Iterator[dict[str, Any]]", iter_jsonl(path)))
    if not rows:
        raise InputError(
            "No shard file of this run is known, so its requests cannot be read back; pass them: "
            "run.results(requests=...)."
        )
    frame = pd.DataFrame(rows, columns=["custom_id", "method", "url", "body"])
    frame.index = pd.Index(frame["custom_id"], name="custom_id")
    return frame


def _canary_size(canary: Any, n: int) -> int:
    """Requests in the canary: a float is a fraction (0.01 = 1 %, at least one request), an int
    a number of requests."""
    fraction = isinstance(canary, float) and 0.0 < canary < 1.0
    count = isinstance(canary, int) and not isinstance(canary, bool) and canary >= 1
    if not (fraction or count):
        raise InputError(
            f"canary={canary!r}: give a fraction of the requests below 1 (canary=0.01 sends 1 % "
            "first) or a number of requests (canary=20)."
        )
    size = max(math.ceil(canary * n), 1) if fraction else int(canary)
    if size >= n:
        raise InputError(
            f"canary={canary!r} is {size} of the {n} requests: a canary must leave requests to "
            "send after it. Use a smaller canary, or none."
        )
    return size


def _canary_rows(n: int, size: int) -> np.ndarray:
    # Spread over the frame (not its first rows, which are often one sector or one desk).
    return np.unique(np.linspace(0, n - 1, size).round().astype(int))


def _with_costs(
    manifest: pd.DataFrame, prices: PricesArg, *, required: bool, provider: str | None = None
) -> pd.DataFrame:
    """The manifest with each shard's estimated batch cost (``est_cost_usd``), which ``submit``
    then takes as is: the watcher sends without needing ``prices=`` again."""
    from portfolio_batch._submit import _shard_costs

    out = manifest.copy()
    out["est_cost_usd"] = _shard_costs(manifest, prices, required=required, provider=provider)
    out.attrs = dict(manifest.attrs)
    return out


def _overall_status(statuses: Sequence[str], plan: dict[str, Any]) -> str:
    """One word for a run: ``sending``, ``canary`` (waiting for its verdict), ``held``, the most
    active batch status while running, then ``failed``, ``expired``, ``cancelled`` or
    ``completed``."""
    states = [p["state"] for p in plan["parts"]]
    if "held" in states:
        return "held"
    non_terminal = [s for s in statuses if s not in TERMINAL]
    if "pending" in states and not non_terminal:
        waiting = (plan.get("canary") or {}).get("verdict") is None and bool(statuses)
        return "canary" if waiting else "sending"
    if non_terminal:
        if "pending" in states and (plan.get("canary") or {}).get("verdict") is None:
            return "canary"
        order = ("cancelling", "in_progress", "finalizing", "validating", "queued")
        return next((s for s in order if s in non_terminal), non_terminal[0])
    for status in ("failed", "expired", "cancelled"):
        if status in statuses or (status == "cancelled" and "cancelled" in states):
            return status
    return "completed" if statuses else "sending"


# -- logging from the watcher ---------------------------------------------------------------------
class _WatcherLogTrap(logging.Filter):
    """Keeps the watcher thread's log records off stderr (which, from a thread, lands in a random
    cell or nowhere depending on the ipykernel version): warnings go to the run's card."""

    def filter(self, record: logging.LogRecord) -> bool:
        run = getattr(threading.current_thread(), "pb_run", None)
        if run is None:
            return True
        if record.levelno >= logging.WARNING:
            run._note(f"{record.levelname.lower()}: {record.getMessage()}")
        return False


_TRAP = _WatcherLogTrap()
_TRAPPED_PREFIXES = ("portfolio_batch", "openai", "httpx", "httpcore")


def _install_log_trap() -> None:
    # A logger's filters see only the records made on that logger, not those propagated from its
    # children: every logger of these libraries gets the filter (new ones at the next round).
    for name in (*_TRAPPED_PREFIXES, *list(logging.root.manager.loggerDict)):
        if not name.startswith(_TRAPPED_PREFIXES):
            continue
        logger = logging.getLogger(name)
        if _TRAP not in logger.filters:
            logger.addFilter(_TRAP)


# -- the run --------------------------------------------------------------------------------------
class Run:
    """A run started with ``pb.start`` (or picked up with ``pb.attach``): shows itself as a live
    card in a notebook, and is the handle to wait for it, collect, cancel and retry it.

        >>> run = pb.start(requests, budget_usd=1.0)   # doctest: +SKIP
        >>> run.status                                 # doctest: +SKIP
        'in_progress'
        >>> results = run.wait().results()             # doctest: +SKIP
    """

    def __init__(self, plan: dict[str, Any], *, client: openai.OpenAI) -> None:
        from portfolio_batch._backend import poll_interval_bounds

        self._plan = plan
        self._client = client
        self.run_id: str = plan["run_id"]
        first, largest = poll_interval_bounds(client)
        self._interval = (max(first, _MIN_INTERVAL_S), max(largest, _MIN_INTERVAL_S))
        self.stall_after: float = float(plan.get("stall_after") or _STALL_INTERVALS * largest)
        self._lock = threading.RLock()  # the run's state and its card
        self._round_lock = threading.Lock()  # one round at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._exc: BaseException | None = None
        self._jobs: pd.DataFrame | None = None
        self._requests: pd.DataFrame | None = None
        self._partial: pd.DataFrame | None = None
        self._partial_batches: frozenset[str] = frozenset()
        self._results: pd.DataFrame | None = None
        self._samples: deque[tuple[float, int]] = deque(maxlen=600)
        self._signature: Any = None
        self._last_change = time.monotonic()
        self._as_of: float | None = None
        self._notes: deque[str] = deque(maxlen=4)
        self._error: str | None = None
        self._message: str | None = None
        self._children: list[Run] = []
        self._card: Any = None
        self._handles: list[Any] = []
        self._fallback_sig: Any = None
        self._hooked = False
        self._shown_in: int | None = None

    # -- state --------------------------------------------------------------------------------
    @property
    def plan(self) -> dict[str, Any]:
        """The run's plan as stored in the registry (a copy)."""
        with self._lock:
            copy: dict[str, Any] = orjson.loads(orjson.dumps(self._plan))
            return copy

    @property
    def keys(self) -> list[tuple[str, int]]:
        """The (run_id, shard) pairs of the batches this run watches."""
        with self._lock:
            return [
                (str(r), int(s)) for part in self._plan["parts"] for r, s in part.get("keys") or []
            ]

    @property
    def jobs(self) -> pd.DataFrame:
        """The run's jobs frame, as the registry has it now (one row per shard sent)."""
        keys = self.keys
        with open_registry() as reg:
            return reg.jobs_frame(keys=keys)

    @property
    def status(self) -> str:
        """``sending``, ``canary`` (waiting for the canary), ``held`` (the canary failed), a batch
        status while running, then ``completed``, ``failed``, ``expired`` or ``cancelled``."""
        frame = self._jobs if self._jobs is not None else self.jobs
        with self._lock:
            return _overall_status(list(frame["status"]), self._plan)

    @property
    def done(self) -> bool:
        """Nothing more will happen without you: every batch ended, or the canary held the rest."""
        return self.status in TERMINAL or self.status == "held"

    @property
    def requests(self) -> pd.DataFrame:
        """The run's requests frame: as given to ``start``, else read back from its shard files."""
        if self._requests is None:
            path = self._plan.get("requests_path")
            if path and Path(path).is_file():
                self._requests = pd.read_pickle(path)
            else:
                self._requests = requests_from_shards(list(self.jobs["path"].dropna()))
        return self._requests

    def _note(self, text: str) -> None:
        with self._lock:
            self._notes.append(text)

    # -- rounds ---------------------------------------------------------------------------------
    def refresh(self) -> Run:
        """One status check now, on this thread (the watcher does this in the background)."""
        self._round()
        self._sync_fallback()
        return self

    def _round(self) -> None:
        with self._round_lock:
            self._send_pending()
            frame = self._refresh_jobs()
            keys = self.keys
            self._judge_canary(frame)
            if self.keys != keys:  # the canary passed and the rest was sent: show it now
                frame = self._refresh_jobs()
            self._collect_partial(frame)
            with self._lock:
                self._as_of = time.time()
            self._render()

    def _refresh_jobs(self) -> pd.DataFrame:
        from portfolio_batch._poll import refresh

        keys = self.keys
        if keys:
            frame = refresh(pd.DataFrame(keys, columns=["run_id", "shard"]), client=self._client)
        else:
            with open_registry() as reg:
                frame = reg.jobs_frame(keys=[])
        with self._lock:
            self._jobs = frame
            finished = int(frame["completed"].sum() + frame["failed"].sum())
            now = time.monotonic()
            self._samples.append((now, finished))
            signature = (
                tuple(zip(frame["status"], frame["completed"], frame["failed"], strict=True)),
                tuple(p["state"] for p in self._plan["parts"]),
            )
            if signature != self._signature:
                self._signature = signature
                self._last_change = now
        return frame

    def _send_pending(self) -> None:
        """Submit the next part that is due: the whole run or its canary at once, the rest once
        the canary passed."""
        from portfolio_batch._submit import job_keys, submit

        for index, part in enumerate(self._plan["parts"]):
            if part["state"] != "pending":
                continue
            if (
                part["name"] == "rest"
                and (self._plan.get("canary") or {}).get("verdict") != "passed"
            ):
                return
            jobs = submit(
                _manifest_of(part),
                client=self._client,
                run_id=self.run_id,
                budget_usd=self._plan.get("budget_usd"),
                metadata=self._plan.get("metadata"),
                max_enqueued_tokens=self._plan.get("max_enqueued_tokens"),
            )
            keys = [list(k) for k in job_keys(jobs)]

            def record(plan: dict[str, Any], i: int = index, k: list[Any] = keys) -> None:
                plan["parts"][i]["keys"] = k
                if plan["parts"][i]["state"] == "pending":
                    plan["parts"][i]["state"] = "sent"

            plan = _update_plan(self.run_id, record)
            with self._lock:
                self._plan = plan
            if plan["parts"][index]["state"] == "cancelled":
                # cancelled while its batches were being created: cancel them too
                from portfolio_batch._submit import cancel

                cancel(jobs, client=self._client)
            return  # one part per round: the rest waits for the canary's verdict

    def _judge_canary(self, frame: pd.DataFrame) -> None:
        canary = self._plan.get("canary")
        if not canary or canary.get("verdict") is not None:
            return
        part = next(p for p in self._plan["parts"] if p["name"] == "canary")
        keys = {(str(r), int(s)) for r, s in part.get("keys") or []}
        if not keys:
            return
        rows = frame[[(r, s) in keys for r, s in zip(frame["run_id"], frame["shard"], strict=True)]]
        if rows.empty or not rows["status"].isin(TERMINAL).all():
            return
        from portfolio_batch._aggregate import aggregate_df

        requests = self.requests
        ids = set(canary["ids"])
        subset = requests[[cid in ids for cid in requests.index]]
        results = aggregate_df(rows, subset, client=self._client)
        bad = results[results["status"] != "succeeded"]
        share = len(bad) / max(len(results), 1)
        failed_batches = rows[rows["status"] != "completed"]
        passed = failed_batches.empty and share <= float(canary["max_failed"])
        reasons = _reasons(bad)
        rest = next((p for p in self._plan["parts"] if p["name"] == "rest"), None)
        n_rest = sum(int(r["n_requests"]) for r in (rest or {}).get("manifest") or [])
        if passed:
            note = (
                f"Canary passed: {len(results) - len(bad)} of {len(results)} answers usable"
                + (f" ({reasons})" if reasons else "")
                + f"; the other {n_rest} requests were sent after it."
            )
        else:
            why = (
                f"its batch ended {', '.join(sorted(set(failed_batches['status'])))}"
                if not failed_batches.empty
                else f"{len(bad)} of {len(results)} answers not usable ({reasons})"
            )
            note = (
                f"Canary held the run: {why}, more than canary_max_failed="
                f"{canary['max_failed']:g} allows. The other {n_rest} requests were not sent. "
                "Fix the prompt, schema or max_tokens and start again, or run.release() to send "
                "them anyway."
            )

        def verdict(plan: dict[str, Any]) -> None:
            if plan["canary"].get("verdict") is not None:
                return  # another kernel judged first
            plan["canary"]["verdict"] = "passed" if passed else "held"
            plan["canary"]["note"] = note
            for p in plan["parts"]:
                if p["name"] == "rest" and p["state"] == "pending" and not passed:
                    p["state"] = "held"

        plan = _update_plan(self.run_id, verdict)
        with self._lock:
            self._plan = plan
        if passed:
            self._send_pending()

    def _collect_partial(self, frame: pd.DataFrame) -> None:
        """The rows of every shard that ended, aggregated again when another one ends."""
        ended = frame[frame["status"].isin(TERMINAL) & frame["batch_id"].notna()]
        batches = frozenset(ended["batch_id"].astype(str))
        if not batches or batches == self._partial_batches:
            return
        from portfolio_batch._aggregate import aggregate_df

        try:
            partial = aggregate_df(ended, self.requests, client=self._client)
        except PortfolioBatchError as exc:
            self._note(f"results so far could not be read: {exc}")
            return
        with self._lock:
            self._partial = partial
            self._partial_batches = batches

    # -- the watcher ----------------------------------------------------------------------------
    @property
    def watching(self) -> bool:
        """True while the background watcher runs."""
        return self._thread is not None and self._thread.is_alive()

    def watch(self) -> Run:
        """Keep the card updating in the background until the run is done (``start`` and
        ``attach`` do this in a notebook)."""
        if self.watching:
            return self
        self._stop.clear()
        with self._lock:
            self._exc = None
            self._error = None
        self._thread = threading.Thread(
            target=self._watch_loop, name=f"pb-watch-{self.run_id}", daemon=True
        )
        self._thread.pb_run = self  # type: ignore[attr-defined]
        _install_log_trap()
        self._thread.start()
        return self

    def stop(self) -> Run:
        """Stop the background watcher (the batches keep running; ``watch()`` carries on)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        return self

    def _watch_loop(self) -> None:
        wait, failures = self._interval[0], 0
        try:
            while not self._stop.is_set():
                _install_log_trap()
                try:
                    self._round()
                    failures = 0
                except _TRANSIENT as exc:
                    failures += 1
                    if failures >= _MAX_FAILURES:
                        raise
                    self._note(f"checking failed ({type(exc).__name__}: {exc}); trying again")
                if self.done:
                    break
                self._stop.wait(wait)
                wait = min(wait * 1.5, self._interval[1])
        except BaseException as exc:  # a thread's traceback would print into some cell
            with self._lock:
                self._exc = exc
                self._error = (
                    f"Watching stopped: {type(exc).__name__}: {exc}. The batches keep running; "
                    "run.watch() tries again, run.wait() raises this error."
                )
        finally:
            self._render()

    # -- waiting and results --------------------------------------------------------------------
    def wait(self, *, timeout: float | None = None, raise_on_failed: bool = True) -> Run:
        """Block until the run is done (for scripts and papermill); returns the run.

        Raises ``CanaryHeldError`` if the canary held the rest back, ``BatchFailedError`` if a
        batch failed (``raise_on_failed=False`` returns instead) and ``PollTimeoutError`` after
        ``timeout`` seconds (the batches keep running: ``wait()`` again, or ``pb.attach``).

            >>> results = pb.start(requests).wait().results()   # doctest: +SKIP
        """
        started = time.monotonic()
        pause = self._interval[0]
        while True:
            if self.watching:
                self._thread.join(timeout=0.2)  # type: ignore[union-attr]
            else:
                if self._exc is not None:
                    exc, self._exc = self._exc, None
                    raise exc
                self._round()
                if self.done:
                    break
                time.sleep(pause)
                pause = min(pause * 1.5, self._interval[1])
            if not self.watching and self.done:
                break
            if timeout is not None and time.monotonic() - started >= timeout:
                raise PollTimeoutError(
                    f"Run {self.run_id} is still {self.status} after timeout={timeout} s; its "
                    f"batches keep running. run.wait() again, or after a restart "
                    f'pb.attach("{self.run_id}").',
                    jobs=self.jobs,
                )
        if self._exc is not None:
            exc, self._exc = self._exc, None
            raise exc
        self._render()
        self._sync_fallback(force=True)
        if raise_on_failed:
            self._raise_for_outcome()
        return self

    def _raise_for_outcome(self) -> None:
        canary = self._plan.get("canary") or {}
        frame = self.jobs
        if canary.get("verdict") == "held":
            raise CanaryHeldError(f"Run {self.run_id}: {canary.get('note')}", jobs=frame)
        failed = frame[frame["status"] == "failed"]
        if failed.empty:
            return
        lines, errors = [], []
        with open_registry() as reg:
            for row in failed.to_dict("records"):
                stored = reg.batch(row["batch_id"]) if row["batch_id"] else None
                data = (stored or {}).get("errors") or [
                    {"code": None, "message": "no errors given"}
                ]
                lines.append(f"batch {row['batch_id']} (shard {row['shard']}, {row['path']}):")
                for e in data:
                    where = f"line {e['line']}" if e.get("line") is not None else "file"
                    lines.append(f"  {where}: {e.get('code')}: {e.get('message')}")
                    errors.append({"batch_id": row["batch_id"], "shard": row["shard"], **e})
        raise BatchFailedError(
            f"Run {self.run_id}: {len(failed)} batch(es) failed:\n"
            + "\n".join(lines)
            + "\nFix those requests and pb.start() them again; run.retry_failed() resends the "
            "requests without an answer.",
            jobs=frame,
            errors=errors,
        )

    def results(
        self, *, partial: bool = False, requests: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """One row per request (``aggregate_df``): every row of a finished run; with
        ``partial=True`` the rows of the shards finished so far (the others ``missing``).
        A retry run's results are laid over its parent's (``merge_results``).

            >>> results = run.wait().results()            # doctest: +SKIP
        """
        from portfolio_batch._aggregate import aggregate_df

        if requests is not None:
            self._requests = requests
        if not self.watching and not self.done:
            self._round()  # nobody is watching: the cached status may be old
        done = self.done
        if not done and not partial:
            frame = self.jobs
            finished = int(frame["completed"].sum() + frame["failed"].sum())
            raise InputError(
                f"Run {self.run_id} is still {self.status} ({finished} of "
                f"{int(frame['n_requests'].sum())} requests done): run.wait() first, or "
                "run.results(partial=True) for the rows finished so far."
            )
        if done and self._results is not None:
            return self._results.copy()
        frame = self.jobs
        ended = frame[frame["status"].isin(TERMINAL) & frame["batch_id"].notna()]
        out = aggregate_df(ended, self.requests, client=self._client)
        parent_id = self._plan.get("parent_run_id")
        if parent_id:
            from portfolio_batch._retry import merge_results

            parent = attach(parent_id, client=self._client, display=False, watch=False)
            out = merge_results(parent.results(partial=True), out)
        if done:
            self._results = out.copy()
            self._sync_fallback(force=True)
        return out

    # -- actions --------------------------------------------------------------------------------
    def cancel(self) -> Run:
        """Cancel every unfinished batch and drop what was not sent yet (a held rest, a pending
        canary); results already produced stay collectable."""
        from portfolio_batch._submit import cancel

        def drop(plan: dict[str, Any]) -> None:
            for p in plan["parts"]:
                if p["state"] in ("pending", "held"):
                    p["state"] = "cancelled"
            if plan.get("canary") and plan["canary"].get("verdict") is None:
                plan["canary"]["verdict"] = "cancelled"
                plan["canary"]["note"] = "Cancelled before the canary's verdict: nothing more sent."

        plan = _update_plan(self.run_id, drop)
        with self._lock:
            self._plan = plan
        keys = self.keys
        if keys:
            cancel(pd.DataFrame(keys, columns=["run_id", "shard"]), client=self._client)
        with self._lock:
            self._message = "Cancel sent: unfinished batches are being cancelled."
        self._after_action()
        return self

    def release(self) -> Run:
        """Send the requests a failed canary held back, anyway."""
        canary = self._plan.get("canary") or {}
        if canary.get("verdict") != "held":
            raise InputError(f"Run {self.run_id} holds nothing back (canary: {canary or 'none'}).")

        def go(plan: dict[str, Any]) -> None:
            plan["canary"]["verdict"] = "passed"
            plan["canary"]["note"] = (plan["canary"].get("note") or "") + " Released by the user."
            for p in plan["parts"]:
                if p["state"] == "held":
                    p["state"] = "pending"

        plan = _update_plan(self.run_id, go)
        with self._lock:
            self._plan = plan
        self._send_pending()
        self._after_action()
        return self

    def retry_failed(
        self, *, max_tokens: int | None = None, **options: Unpack[StartOptions]
    ) -> Run:
        """Start a run of the requests worth sending again (``pb.retry_failed``: expired,
        cancelled, missing, invalid_output, transient failures); its ``results()`` are this run's
        with the retried rows laid over them.

            >>> again = run.retry_failed(max_tokens=800)   # doctest: +SKIP
        """
        from portfolio_batch._retry import retry_failed

        again = retry_failed(self.results(partial=True), self.requests, max_tokens=max_tokens)
        if again.empty:
            raise InputError(
                f"Run {self.run_id} has nothing to retry: no row is expired, cancelled, missing, "
                "invalid_output or failed for a transient cause."
            )
        options.setdefault("budget_usd", self._plan.get("budget_usd"))
        options.setdefault("title", f"Retry of {self.run_id}")
        child = start(again, client=self._client, _parent=self.run_id, **options)
        with self._lock:
            self._children.append(child)
        return child

    def report(self, *, path: str | Path | None = None) -> Path:
        """Write the run's HTML report (``pb.report``), by default to ``reports/<run_id>.html``."""
        from portfolio_batch._report import report

        target = Path(path) if path is not None else Path("reports") / f"{self.run_id}.html"
        out = report(self.results(), costs=self.cost_estimate(), path=target, jobs=self.jobs)
        with self._lock:
            self._plan["report_path"] = str(out)
        return out

    def cost_estimate(self) -> pd.DataFrame | None:
        """The ``estimate_cost`` frame of the run's requests at the batch prices of the provider
        it ran at (and its ``prices=``): the estimate the card shows, which ``run.report()``
        sets against the actual cost. None if no price is known for its model.

            >>> run.cost_estimate()["batch_cost_usd"].sum()   # doctest: +SKIP
        """
        from portfolio_batch._backend import backend_name, provider_of_backend
        from portfolio_batch._cost import pricing_provider

        at = pricing_provider(provider_of_backend(backend_name(self._client)))
        return _run_costs(self.requests, self._plan.get("prices"), provider=at)

    def _after_action(self) -> None:
        if not self.done and not self.watching and self._card is not None:
            self.watch()
        self._render()

    # -- the card -------------------------------------------------------------------------------
    def view(self) -> RunView:
        """What the card shows now, as a ``widgets.RunView``."""
        from portfolio_batch._widgets import RunView, backend_banner

        with self._lock:
            frame = self._jobs if self._jobs is not None else self.jobs
            self._jobs = frame
            plan = self._plan
            status = _overall_status(list(frame["status"]), plan)
            done = status in TERMINAL or status == "held"
            partial = self._partial
            canary = plan.get("canary")
            canary_keys = {
                (str(r), int(s))
                for p in plan["parts"]
                if p["name"] == "canary"
                for r, s in p.get("keys") or []
            }
            shards = []
            for row in frame.to_dict("records"):
                rows = (
                    partial[partial["batch_id"] == row["batch_id"]]
                    if partial is not None and "batch_id" in partial and row["batch_id"]
                    else None
                )
                shards.append(
                    {
                        "shard": f"{row['shard']}",
                        "run_id": row["run_id"],
                        "batch_id": row["batch_id"] or "(waiting for queue capacity)",
                        "status": row["status"],
                        "completed": int(row["completed"]),
                        "failed": int(row["failed"]),
                        "total": max(int(row["n_requests"]), int(row["completed"] + row["failed"])),
                        "canary": (row["run_id"], int(row["shard"])) in canary_keys,
                        "reasons": _reasons(rows[rows["status"] != "succeeded"])
                        if rows is not None
                        else "",
                    }
                )
            held = [
                int(r["n_requests"])
                for p in plan["parts"]
                if p["state"] in ("pending", "held")
                for r in p["manifest"]
            ]
            total = sum(s["total"] for s in shards) + sum(held)
            finished = sum(s["completed"] + s["failed"] for s in shards)
            est = plan.get("est_cost_usd")
            billed, simulated = self._billed(frame)
            reviewed, top, reasons = _reviewed(partial, self._requests)
            now = time.monotonic()
            quiet = now - self._last_change
            return RunView(
                run_id=self.run_id,
                title=plan.get("title") or f"Run {self.run_id}",
                model=str(plan.get("model") or (frame["model"].iloc[0] if len(frame) else "")),
                status=status,
                done=done,
                banner=backend_banner(frame) if len(frame) else None,
                shards=shards,
                canary_note=(canary or {}).get("note")
                or (
                    f"canary: {canary['n']} request(s) first; the other "
                    f"{sum(held)} wait for their answers (canary_max_failed="
                    f"{canary['max_failed']:g})."
                    if canary
                    else None
                ),
                total=total,
                finished=finished,
                failed=sum(s["failed"] for s in shards),
                held=sum(held) if status == "held" else 0,
                eta_s=0.0 if done else self._eta(finished, total),
                est_cost_usd=est,
                billed_usd=billed,
                simulated=simulated,
                prices_of=_prices_of(frame),
                as_of=self._as_of,
                stalled=not done and quiet > self.stall_after,
                quiet_s=quiet,
                stall_after_s=self.stall_after,
                reasons=reasons,
                reviewed=reviewed,
                top=top,
                notes=list(self._notes),
                error=self._error,
                message=self._message,
                watching=self.watching,
                can_retry=done and partial is not None and bool(reasons),
            )

    def _billed(self, frame: pd.DataFrame) -> tuple[float | None, bool]:
        from portfolio_batch._backend import is_local_backend

        simulated = any(is_local_backend(str(b)) for b in frame["backend"])
        ids = [b for b in frame["batch_id"] if b]
        if not ids:
            return None, simulated
        with open_registry() as reg:
            costs = [(reg.batch(b) or {}).get("actual_cost_usd") for b in ids]
        known = [float(c) for c in costs if c is not None]
        if known:
            return sum(known), simulated
        if self._partial is not None and "cost_usd" in self._partial:
            return float(np.nansum(self._partial["cost_usd"].to_numpy(dtype=float))), simulated
        return None, simulated

    def _eta(self, finished: int, total: int) -> float | None:
        """Seconds left at the throughput observed over the last ten minutes."""
        if not self._samples or finished >= total:
            return None
        now, latest = self._samples[-1]
        older = [(t, f) for t, f in self._samples if now - t <= 600 and f < latest]
        if not older:
            return None
        t0, f0 = older[0]
        rate = (latest - f0) / max(now - t0, 1e-6)
        return (total - finished) / rate if rate > 0 else None

    def _render(self) -> None:
        """Show the current view on the card: widget values only, from any thread."""
        if self._card is None:
            return
        try:
            view = self.view()
            with self._lock:
                self._card.show(view)
        except Exception as exc:  # the card must never raise into the watcher or a button
            with self._lock:
                self._error = f"The card could not be updated: {type(exc).__name__}: {exc}"

    def _bundle(self) -> dict[str, Any]:
        from portfolio_batch._widgets import run_card_html, run_card_text

        view = self.view()
        bundle: dict[str, Any] = {
            "text/plain": run_card_text(view),
            "text/html": run_card_html(view),
        }
        if self._card is not None:
            bundle.update(self._card.widget._repr_mimebundle_())
            bundle["text/html"] = run_card_html(view)
            bundle["text/plain"] = run_card_text(view)
        return bundle

    def _make_card(self) -> None:
        from portfolio_batch._widgets import RunCard, in_notebook

        if self._card is not None or not in_notebook():
            return
        self._card = RunCard(
            on_cancel=lambda: self._button(self.cancel),
            on_retry=lambda: self._button(self._retry_button),
            on_report=lambda: self._button(self._report_button),
        )
        self._render()

    def _button(self, action: Callable[[], Any]) -> None:
        # runs on the kernel's main thread, from a comm message: no cell shows its output, so
        # the outcome (or the error) goes on the card
        try:
            action()
        except Exception as exc:
            with self._lock:
                self._message = f"{type(exc).__name__}: {exc}"
        self._render()

    def _retry_button(self) -> None:
        child = self.retry_failed(display=False)
        child._make_card()
        if self._card is not None and child._card is not None:
            self._card.add_child(child._card.widget)
        child.watch()
        with self._lock:
            self._message = f"Retrying the failed requests as run {child.run_id} (below)."

    def _report_button(self) -> None:
        path = self.report()
        link = html.escape(str(path))
        with self._lock:
            self._message = (
                f'Report written: <a href="{link}" target="_blank">{link}</a> '
                f"({html.escape(str(path.resolve()))})"
            )

    def _ipython_display_(self) -> None:
        from IPython import get_ipython
        from IPython.display import display

        shell = get_ipython()
        count = getattr(shell, "execution_count", None)
        if self._handles and count is not None and count == self._shown_in:
            return  # start() showed it in this cell already
        self._make_card()
        bundle = self._bundle()
        display_id = self._handles[0].display_id if self._handles else True
        handle = display(bundle, raw=True, display_id=display_id)
        if handle is not None and not self._handles:
            self._handles.append(handle)
        self._shown_in = count
        if shell is not None and not self._hooked and hasattr(shell, "events"):
            shell.events.register("post_run_cell", self._post_run_cell)
            self._hooked = True

    def _post_run_cell(self, *_: Any) -> None:
        self._sync_fallback()
        if self.done and self._fallback_sig is not None and not self.watching:
            shell = _shell()
            if shell is not None and self._hooked:
                with contextlib.suppress(ValueError):  # already gone
                    shell.events.unregister("post_run_cell", self._post_run_cell)
                self._hooked = False

    def _sync_fallback(self, *, force: bool = False) -> None:
        """Refresh the saved HTML/text of the card's outputs (kernel main thread only): what a
        saved notebook, nbconvert or a viewer without widgets shows."""
        if not self._handles or threading.current_thread() is not threading.main_thread():
            return
        view = self.view()
        sig = (view.status, tuple(s["status"] for s in view.shards), view.finished, view.done)
        if not force and sig == self._fallback_sig:
            return
        self._fallback_sig = sig
        bundle = self._bundle()
        for handle in self._handles:
            handle.update(bundle, raw=True)

    def _repr_html_(self) -> str:
        from portfolio_batch._widgets import run_card_html

        return run_card_html(self.view())

    def __repr__(self) -> str:
        from portfolio_batch._widgets import run_card_text

        return run_card_text(self.view())


def _shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def _reasons(bad: pd.DataFrame | None) -> str:
    """``"invalid_output 3, rate_limit_exceeded 1"``: unusable rows by error code, else status."""
    if bad is None or bad.empty:
        return ""
    codes = bad["error_code"].astype(object) if "error_code" in bad else None
    labels = [
        str(c) if c is not None and not (isinstance(c, float) and math.isnan(c)) else str(s)
        for c, s in zip(
            codes if codes is not None else [None] * len(bad), bad["status"], strict=True
        )
    ]
    counts = pd.Series(labels).value_counts()
    return ", ".join(f"{k} {int(v)}" for k, v in counts.items())


def _prices_of(jobs: pd.DataFrame) -> str:
    """Whose prices a simulated run's cost is at: the provider its batches were sent to."""
    from portfolio_batch._backend import provider_of_backend, provider_shown

    names = jobs["backend"].dropna() if "backend" in jobs.columns else pd.Series(dtype=object)
    return provider_shown(provider_of_backend(str(names.iloc[0]) if len(names) else None))[0]


def _reviewed(
    partial: pd.DataFrame | None, requests: pd.DataFrame | None
) -> tuple[int, pd.DataFrame | None, str]:
    """(rows answered so far, the worst-scored of them, unusable rows by reason)."""
    if partial is None:
        return 0, None, ""
    seen = partial[partial["status"] != "missing"]
    bad = seen[seen["status"] != "succeeded"]
    ok = seen[seen["status"] == "succeeded"]
    if "risk_score" in ok:
        score = pd.to_numeric(ok["risk_score"], errors="coerce")
        ok = ok.assign(_score=score).sort_values("_score", ascending=False, na_position="last")
    key = None
    if requests is not None and "body" in requests.columns:
        inputs = list(requests.columns[list(requests.columns).index("body") + 1 :])
        key = inputs[0] if inputs else None
    wanted = [key, "name", "sector", "weight", "risk_score", "risk_level", "rationale"]
    cols = [c for c in dict.fromkeys(wanted) if c is not None and c in ok.columns]
    if not cols:
        cols = [c for c in ("custom_id", "status") if c in ok.columns]
    return len(seen), ok[cols].head(_TOP_ROWS), _reasons(bad)


# -- public functions -----------------------------------------------------------------------------
def start(
    requests_or_manifest: pd.DataFrame,
    *,
    budget_usd: float | None = None,
    canary: float | None = None,
    canary_max_failed: float = 0.1,
    client: openai.OpenAI | None = None,
    out_dir: str | Path | None = None,
    metadata: dict[str, Any] | None = None,
    max_enqueued_tokens: int | None = None,
    prices: PricesArg = None,
    title: str | None = None,
    display: bool | None = None,
    watch: bool | None = None,
    stall_after: float | None = None,
    _parent: str | None = None,
) -> Run:
    """Send a run and return its ``Run`` at once; in a notebook it shows a live card and keeps
    watching in the background.

    ``requests_or_manifest``: the ``build_requests`` frame (kept with the run, so that results
    keep your columns) or a ``to_jsonl`` manifest. ``budget_usd`` refuses the whole run before
    anything is sent. ``canary=0.01`` (a fraction, or a number of requests) sends a small shard
    first, spread over the frame, and the rest only once more than ``1 - canary_max_failed`` of
    its answers are usable: a bad prompt or schema costs cents, not the whole batch.
    ``display``/``watch`` default to whether this runs in a notebook kernel; elsewhere the
    batches are sent before ``start`` returns and ``wait()`` polls. ``stall_after`` (seconds
    without any movement before the card flags a stall) defaults to 30 poll intervals: 30 s on
    the local server, 30 min on OpenAI.

        >>> run = pb.start(requests, budget_usd=1.0, canary=0.05)   # doctest: +SKIP
        >>> results = run.wait().results()                          # doctest: +SKIP
    """
    from portfolio_batch._backend import backend_name
    from portfolio_batch._backend import client as default_client
    from portfolio_batch._home import cache_dir, writable_dir
    from portfolio_batch._jsonl import to_jsonl
    from portfolio_batch._submit import _provider, _user_metadata, new_run_id
    from portfolio_batch._widgets import in_notebook

    _user_metadata(metadata)  # bad keys are refused now, not by the watcher
    if not 0.0 <= float(canary_max_failed) < 1.0:
        raise InputError(
            f"canary_max_failed={canary_max_failed!r} must be in [0, 1): the share of canary "
            "answers that may be unusable before the rest is held back."
        )
    c = client
    run_id = new_run_id()
    base = writable_dir(
        Path(out_dir) if out_dir is not None else cache_dir("runs") / run_id,
        what="start(out_dir=...)",
    )
    requests, manifest = _split_input(requests_or_manifest, base / "shards")
    if c is None:  # the provider of the model (claude-* on Anthropic, ...)
        c = default_client(provider=_provider(manifest))
    parts: list[dict[str, Any]] = []
    canary_plan: dict[str, Any] | None = None
    if canary is not None:
        if requests is None:
            requests = requests_from_shards(list(manifest["path"]))
        size = _canary_size(canary, len(requests))
        pick = _canary_rows(len(requests), size)
        mask = np.zeros(len(requests), dtype=bool)
        mask[pick] = True
        limits = {
            k: manifest.attrs[k]
            for k in ("max_requests", "max_bytes", "max_input_tokens")
            if manifest.attrs.get(k) is not None
        }
        first = to_jsonl(requests[mask], base / "canary", **limits)
        rest = to_jsonl(requests[~mask], base / "rest", **limits)
        rest["shard"] = rest["shard"] + len(first)
        manifests = [("canary", first), ("rest", rest)]
        pieces = [mask, ~mask]
        canary_plan = {
            "n": int(mask.sum()),
            "ids": [str(i) for i in requests.index[mask]],
            "max_failed": float(canary_max_failed),
            "verdict": None,
            "note": None,
        }
    else:
        manifests = [("all", manifest)]
        pieces = None
    from portfolio_batch._backend import provider_of_backend
    from portfolio_batch._cost import pricing_provider

    at = pricing_provider(provider_of_backend(backend_name(c)))  # Mistral's rates on Mistral
    # the card, pb.runs(), the budget check and run.report() then show estimate_cost's figure,
    # not to_jsonl's ~4-characters-a-token approximation of the input
    manifests = _exactly_priced(manifests, requests, pieces, prices, provider=at)
    manifests = [
        (n, _with_costs(m, prices, required=budget_usd is not None, provider=at))
        for n, m in manifests
    ]
    estimates = [_sum_known(m["est_cost_usd"]) for _, m in manifests]
    total = sum(e for e in estimates if e is not None)
    if budget_usd is not None and total > budget_usd:
        n = sum(int(m["n_requests"].sum()) for _, m in manifests)
        raise BudgetExceededError(
            f"The estimated batch cost ${total:.4f} of {n} requests is over "
            f"budget_usd=${budget_usd:.4f}. Nothing was sent. Raise budget_usd, use a cheaper "
            "model, or send fewer rows.",
            estimate_usd=total,
            budget_usd=float(budget_usd),
        )
    if max_enqueued_tokens is not None:
        for _, m in manifests:
            big = m[m["est_input_tokens"] > max_enqueued_tokens]
            if len(big):
                raise InputError(
                    f"Shard {big['shard'].iloc[0]} ({big['path'].iloc[0]}) has "
                    f"{int(big['est_input_tokens'].iloc[0])} input tokens, more than "
                    f"max_enqueued_tokens={max_enqueued_tokens}, so it could never be enqueued. "
                    f"Make smaller shards: to_jsonl(requests, out_dir, "
                    f"max_input_tokens={max_enqueued_tokens})."
                )
    for (name, m), est in zip(manifests, estimates, strict=True):
        parts.append(
            {
                "name": name,
                "state": "pending",
                "manifest": _records(m),
                "attrs": {k: v for k, v in m.attrs.items() if k == "retry_of_batches"},
                "keys": [],
                "est_cost_usd": est,
            }
        )
    requests_path = None
    if requests is not None:
        requests_path = str(base / "requests.pkl")
        requests.to_pickle(requests_path)
    model = str(manifests[0][1]["model"].iloc[0])
    plan = {
        "version": _PLAN_VERSION,
        "run_id": run_id,
        "created_at": time.time(),
        "title": title
        or f"Risk review: {sum(int(m['n_requests'].sum()) for _, m in manifests)} "
        f"requests on {model}",
        "model": model,
        "backend": backend_name(c),
        "requests_path": requests_path,
        "out_dir": str(base),
        "budget_usd": budget_usd,
        "est_cost_usd": total if any(e is not None for e in estimates) else None,
        "prices": _plan_prices(prices),
        "metadata": metadata,
        "max_enqueued_tokens": max_enqueued_tokens,
        "stall_after": stall_after,
        "canary": canary_plan,
        "parent_run_id": _parent,
        "parts": parts,
    }
    with open_registry() as reg:
        _write_plan(reg, plan)  # before anything is sent: a new kernel finds what is due
    run = Run(plan, client=c)
    run._requests = requests
    notebook = in_notebook()
    show = display if display is not None else notebook
    if show:
        run._make_card()
    if watch if watch is not None else notebook:
        run.watch()  # the watcher sends: start returns at once
    else:
        run._send_pending()  # scripts: sent before start returns
        run._refresh_jobs()
    if show:
        _show(run)
    return run


def _show(run: Run) -> None:
    try:
        from IPython.display import display
    except ImportError:  # no IPython: nothing can show it
        return
    display(run)


def _exactly_priced(
    manifests: list[tuple[str, pd.DataFrame]],
    requests: pd.DataFrame | None,
    pieces: list[np.ndarray] | None,
    prices: PricesArg,
    *,
    provider: str | None,
) -> list[tuple[str, pd.DataFrame]]:
    """``manifests`` with ``estimate_cost``'s token counts and costs per shard (``pieces``: each
    manifest's rows of ``requests``, None for all of them in one)."""
    costs = _run_costs(requests, prices, provider=provider) if requests is not None else None
    if costs is None:
        return manifests
    masks = pieces or [np.ones(len(costs), dtype=bool)]
    return [(n, _exact_estimates(m, costs[k])) for (n, m), k in zip(manifests, masks, strict=True)]


def _run_costs(
    requests: pd.DataFrame, prices: PricesArg, *, provider: str | None
) -> pd.DataFrame | None:
    """``estimate_cost`` of a run's requests at ``provider``'s batch prices (each answer at its
    ``max_tokens``); None where it cannot price them, and the manifest's estimate stands (or
    ``budget_usd`` refuses the run, naming the model without a price)."""
    from portfolio_batch._cost import estimate_cost
    from portfolio_batch.errors import PricingError

    try:
        return estimate_cost(requests, prices=prices, provider=provider)
    except (PricingError, InputError):  # no price, or a body without max_tokens
        return None


def _exact_estimates(manifest: pd.DataFrame, costs: pd.DataFrame) -> pd.DataFrame:
    """The manifest with each shard's ``est_input_tokens`` and ``est_cost_usd`` summed from
    ``costs``, the ``estimate_cost`` rows of the requests it holds in the order to_jsonl wrote
    them; unchanged if they do not line up."""
    n = manifest["n_requests"].to_numpy(dtype=np.int64)
    if not len(costs) or int(n.sum()) != len(costs):
        return manifest
    starts = np.concatenate([[0], np.cumsum(n)[:-1]])
    ids = costs["custom_id"].astype(str).to_numpy()
    if [str(i) for i in ids[starts]] != [str(i) for i in manifest["first_custom_id"]]:
        return manifest
    out = manifest.copy()
    out["est_input_tokens"] = np.add.reduceat(costs["input_tokens"].to_numpy(np.int64), starts)
    out["est_cost_usd"] = np.add.reduceat(costs["batch_cost_usd"].to_numpy(np.float64), starts)
    out.attrs = dict(manifest.attrs)
    return out


def _plan_prices(prices: PricesArg) -> Any:
    """``prices=`` as the plan stores it (plain JSON), so that ``run.report()`` prices the
    estimate as ``start`` did; None if it is not plain JSON."""
    if prices is None:
        return None
    if isinstance(prices, str | os.PathLike):
        return os.fspath(prices)
    try:
        plain = {str(m): dict(fields) for m, fields in prices.items()}
        return orjson.loads(orjson.dumps(plain, option=orjson.OPT_SERIALIZE_NUMPY))
    except (TypeError, ValueError, AttributeError):
        return None


def _sum_known(values: Iterable[Any]) -> float | None:
    known = [float(v) for v in values if v is not None and not pd.isna(v)]
    return float(sum(known)) if known else None


def attach(
    run_id: str,
    *,
    client: openai.OpenAI | None = None,
    display: bool | None = None,
    watch: bool | None = None,
) -> Run:
    """The ``Run`` of ``run_id`` from the registry, e.g. after a kernel restart: shows the same
    card and carries on watching the same batches (none is sent again). A run submitted with
    ``pb.submit`` (no plan) is picked up from its shards; a run only the server knows (registry
    lost) through ``pb.resume``.

        >>> run = pb.attach(pb.runs()["run_id"].iloc[0])   # doctest: +SKIP
    """
    from portfolio_batch._backend import backend_name, client_for
    from portfolio_batch._submit import check_backend, job_keys, resume
    from portfolio_batch._widgets import in_notebook

    if not isinstance(run_id, str) or not run_id:
        raise InputError(f"attach() takes a run id (pb.runs() lists them), not {run_id!r}.")
    with open_registry() as reg:
        plan = _read_plan(reg, run_id)
    c = client if client is not None else client_for(plan.get("backend") if plan else None)
    if plan is None:
        jobs = resume(run_id, client=c)
        plan = {
            "version": _PLAN_VERSION,
            "run_id": run_id,
            "created_at": time.time(),
            "title": f"Run {run_id}",
            "model": str(jobs["model"].iloc[0]) if len(jobs) else None,
            "backend": backend_name(c),
            "requests_path": None,
            "out_dir": None,
            "budget_usd": None,
            "est_cost_usd": float(jobs["est_cost_usd"].sum(min_count=1))
            if jobs["est_cost_usd"].notna().any()
            else None,
            "metadata": None,
            "max_enqueued_tokens": None,
            "stall_after": None,
            "canary": None,
            "parent_run_id": None,
            "parts": [
                {
                    "name": "all",
                    "state": "sent",
                    "manifest": [],
                    "attrs": {},
                    "keys": [list(k) for k in job_keys(jobs)],
                    "est_cost_usd": None,
                }
            ],
        }
        with open_registry() as reg:
            _write_plan(reg, plan)
    run = Run(plan, client=c)
    frame = run.jobs
    if len(frame):
        check_backend(frame, c)
    notebook = in_notebook()
    show = display if display is not None else notebook
    if show:
        run._make_card()
    run._round()  # the card shows where the run is, and a finished run's answers, at once
    if (watch if watch is not None else notebook) and not run.done:
        run.watch()
    if show:
        _show(run)
    return run


def runs(*, limit: int | None = None) -> pd.DataFrame:
    """Every run in the registry, newest first: status, shards, requests done and failed, the
    estimated and billed cost. In a notebook it displays as a table; ``attach(run_id)`` picks one
    up.

    >>> import portfolio_batch as pb
    >>> list(pb.runs().columns[:4])
    ['run_id', 'created_at', 'status', 'title']
    """
    from portfolio_batch._widgets import RunsFrame

    columns = [
        "run_id",
        "created_at",
        "status",
        "title",
        "shards",
        "n_requests",
        "completed",
        "failed",
        "est_cost_usd",
        "billed_usd",
        "model",
        "backend",
        "canary",
    ]
    with open_registry() as reg:
        plans = _all_plans(reg)
        try:
            run_rows = [
                dict(r)
                for r in reg.conn.execute(
                    "SELECT run_id, created_at, backend, model, est_cost_usd FROM runs"
                ).fetchall()
            ]
            billed = {
                r[0]: r[1]
                for r in reg.conn.execute(
                    "SELECT batch_id, actual_cost_usd FROM batches"
                ).fetchall()
            }
        except sqlite3.Error as exc:
            raise RegistryError(
                f"Cannot read the runs in the job registry {reg.path}: {exc}"
            ) from exc
        entries: list[dict[str, Any]] = []
        seen_keys: list[frozenset[tuple[str, int]]] = []
        covered: set[tuple[str, int]] = set()
        # oldest first, so that a re-run of the same requests (the same batches) is hidden
        for plan in sorted(plans, key=lambda p: p["created_at"]):
            keys = frozenset(
                (str(r), int(s)) for part in plan["parts"] for r, s in part.get("keys") or []
            )
            if keys and keys in seen_keys:
                continue
            seen_keys.append(keys)
            covered |= keys
            frame = reg.jobs_frame(keys=sorted(keys))
            entries.append(_run_entry(plan, frame, billed))
        planned = {p["run_id"] for p in plans}
        for row in run_rows:
            if row["run_id"] in planned:
                continue
            frame = reg.jobs_frame(run_id=row["run_id"])
            if len(frame) and set(zip(frame["run_id"], frame["shard"], strict=True)) <= covered:
                continue
            pseudo = {
                "run_id": row["run_id"],
                "created_at": row["created_at"],
                "title": "(pb.submit)",
                "model": row["model"],
                "backend": row["backend"],
                "est_cost_usd": row["est_cost_usd"],
                "canary": None,
                "parts": [{"name": "all", "state": "sent", "manifest": [], "keys": []}],
            }
            entries.append(_run_entry(pseudo, frame, billed))
    out = pd.DataFrame(entries, columns=columns)
    out = out.sort_values("created_at", ascending=False, kind="stable").reset_index(drop=True)
    out["created_at"] = pd.to_datetime(out["created_at"], unit="s", utc=True)
    if limit is not None:
        out = out.head(limit)
    return RunsFrame(out)


def _run_entry(plan: dict[str, Any], frame: pd.DataFrame, billed: dict[str, Any]) -> dict[str, Any]:
    held = sum(
        int(r["n_requests"])
        for p in plan["parts"]
        if p["state"] in ("pending", "held")
        for r in p.get("manifest") or []
    )
    costs = [billed.get(b) for b in frame["batch_id"] if b]
    known = [float(c) for c in costs if c is not None]
    canary = plan.get("canary")
    return {
        "run_id": plan["run_id"],
        "created_at": float(plan["created_at"]),
        "status": _overall_status(list(frame["status"]), plan),
        "title": plan.get("title"),
        "shards": len(frame),
        "n_requests": int(frame["n_requests"].sum()) + held,
        "completed": int(frame["completed"].sum()),
        "failed": int(frame["failed"].sum()),
        "est_cost_usd": plan.get("est_cost_usd"),
        "billed_usd": sum(known) if known else None,
        "model": plan.get("model"),
        "backend": plan.get("backend"),
        "canary": (canary.get("verdict") or "waiting") if canary else "",
    }
