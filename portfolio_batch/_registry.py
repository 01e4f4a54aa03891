"""The job registry: every run, shard, uploaded file and batch, in SQLite under the home.

It is what makes ``resume`` possible after a kernel restart or a killed process, and lets
``submit`` hand back a shard's batch without asking the server: each shard is written before its
batch is created and each batch as soon as it exists. Before a batch is created, though, the
server is asked (create.py): a batch created but never recorded is found there.

    >>> import portfolio_batch as pb
    >>> pb.jobs()                      # doctest: +SKIP
           run_id  shard        batch_id     status  ...

The file is ``home()/registry.sqlite`` in WAL mode (a notebook and a CLI process can read and write
it at the same time). Its schema evolves through named, append-only migrations recorded in the
``_migrations`` table and applied on every open. It never holds an API key: only ids, hashes,
statuses, counts, costs and times.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import tenacity

from portfolio_batch._contract import ACTIVE, DEAD, JOBS_COLUMNS, TERMINAL
from portfolio_batch._home import home
from portfolio_batch.errors import RegistryError

log = logging.getLogger(__name__)

__all__ = [
    "Registry",
    "open_registry",
    "registry_path",
]

# Append-only: never edit a migration once released, add the next one.
MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "m001_initial",
        [
            """CREATE TABLE runs (
                run_id TEXT PRIMARY KEY,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                backend TEXT NOT NULL,
                model TEXT,
                endpoint TEXT,
                pb_version TEXT,
                metadata TEXT,
                max_enqueued_tokens INTEGER,
                budget_usd REAL,
                est_cost_usd REAL,
                actual_cost_usd REAL
            )""",
            """CREATE TABLE files (
                file_id TEXT PRIMARY KEY,
                backend TEXT NOT NULL,
                sha256 TEXT NOT NULL,
                filename TEXT,
                bytes INTEGER,
                purpose TEXT,
                created_at REAL NOT NULL
            )""",
            "CREATE INDEX files_by_sha256 ON files (backend, sha256)",
            """CREATE TABLE shards (
                run_id TEXT NOT NULL REFERENCES runs (run_id),
                shard INTEGER NOT NULL,
                idem_key TEXT NOT NULL,
                sha256 TEXT NOT NULL,
                path TEXT,
                n_requests INTEGER,
                est_input_tokens INTEGER,
                max_output_tokens INTEGER,
                est_cost_usd REAL,
                model TEXT,
                endpoint TEXT,
                backend TEXT NOT NULL,
                status TEXT NOT NULL,
                batch_id TEXT,
                input_file_id TEXT,
                attempts INTEGER NOT NULL DEFAULT 0,
                not_before REAL,
                creating REAL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                PRIMARY KEY (run_id, shard)
            )""",
            "CREATE INDEX shards_by_key ON shards (idem_key)",
            """CREATE TABLE batches (
                batch_id TEXT PRIMARY KEY,
                backend TEXT NOT NULL,
                run_id TEXT,
                shard INTEGER,
                idem_key TEXT,
                sha256 TEXT,
                input_file_id TEXT,
                output_file_id TEXT,
                error_file_id TEXT,
                status TEXT NOT NULL,
                total INTEGER,
                completed INTEGER,
                failed INTEGER,
                errors TEXT,
                input_tokens INTEGER,
                cached_tokens INTEGER,
                output_tokens INTEGER,
                actual_cost_usd REAL,
                created_at REAL,
                updated_at REAL NOT NULL,
                terminal_at REAL
            )""",
            "CREATE INDEX batches_by_run ON batches (run_id, shard)",
        ],
    ),
    (
        # Who held a shard's creation claim. Unused since creation takes a file lock in the home
        # (create.py), like m001's shards.creating; both stay, as SQLite before 3.35 cannot drop a
        # column and registries written before still open.
        "m002_creation_owner",
        ["ALTER TABLE shards ADD COLUMN creating_owner TEXT"],
    ),
    (
        # What pb.start() knows about a run beyond its shards (run.py): the (run_id, shard) pairs
        # it watches, where its requests frame is saved, a canary's state and the shards it
        # holds back, so that pb.attach(run_id) carries on after a kernel restart. One JSON
        # document per run: only run.py reads it.
        "m003_run_plans",
        [
            """CREATE TABLE run_plans (
                run_id TEXT PRIMARY KEY,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                plan TEXT NOT NULL
            )"""
        ],
    ),
    (
        # One row per reviewed run (report.py): which portfolio it was (its name, and the hash
        # of its sorted position keys for an unnamed one), the input file's sha256, the as-of
        # date, and where a snapshot of its results is kept, so that the next report of the
        # same portfolio finds "the previous run" and compares with it, offline.
        "m004_reviews",
        [
            """CREATE TABLE reviews (
                run_id TEXT PRIMARY KEY,
                portfolio TEXT,
                keys_sha256 TEXT NOT NULL,
                input_sha256 TEXT,
                source TEXT,
                as_of TEXT,
                run_at REAL NOT NULL,
                results_path TEXT NOT NULL,
                n_positions INTEGER,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL
            )""",
            "CREATE INDEX reviews_by_portfolio ON reviews (portfolio, run_at)",
            "CREATE INDEX reviews_by_keys ON reviews (keys_sha256, run_at)",
        ],
    ),
]


# How long any registry operation waits for another process's lock before giving up.
_LOCK_WAIT_S = 30.0


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


# WAL is a property of the file, set once by whichever process creates it. Switching needs an
# exclusive lock and SQLite answers SQLITE_BUSY at once, without the busy timeout, when another
# connection is opening the new file too: so retry until one of us has switched it, within the
# same 30 s the other operations wait.
@tenacity.retry(
    retry=tenacity.retry_if_exception(_locked),
    wait=tenacity.wait_exponential(multiplier=0.005, max=0.25),  # 5 ms, 10 ms, ... 250 ms
    stop=tenacity.stop_after_delay(_LOCK_WAIT_S),
    reraise=True,
)
def _switch_to_wal(conn: sqlite3.Connection) -> str:
    return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])


def registry_path() -> Path:
    """Where the registry lives: ``home()/registry.sqlite``."""
    return home() / "registry.sqlite"


def _now() -> float:
    return time.time()


class Registry:
    """One open connection to the registry; use as a context manager or call ``close()``.

    >>> with open_registry() as reg:            # doctest: +SKIP
    ...     reg.jobs_frame(run_id="run-…")
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else registry_path()
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so that two processes
            # never both read-then-write the same shard.
            self.conn = sqlite3.connect(self.path, timeout=_LOCK_WAIT_S, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self._use_wal()
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as exc:
            raise RegistryError(
                f"Cannot open the job registry {self.path}: {exc}. Check that the directory is "
                "writable (set PORTFOLIO_BATCH_HOME to move it)."
            ) from exc

    def _use_wal(self) -> None:
        mode = _switch_to_wal(self.conn)
        if mode.lower() != "wal":
            # e.g. ":memory:", or a file system without shared memory: SQLite keeps the mode it
            # has, without an error, and works (writers just wait for readers).
            log.warning("the job registry %s stays in %s journal mode, not WAL", self.path, mode)

    # -- plumbing ---------------------------------------------------------------------------------
    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; everything in it is committed together or not at all."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise RegistryError(f"Cannot write the job registry {self.path}: {exc}") from exc
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self.conn.execute("ROLLBACK")
                raise RegistryError(f"Cannot write the job registry {self.path}: {exc}") from exc

    def _write(self, sql: str, params: Sequence[Any] = ()) -> None:
        try:
            with self.transaction() as conn:
                conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise RegistryError(f"Cannot write the job registry {self.path}: {exc}") from exc

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        try:
            return [dict(r) for r in self.conn.execute(sql, params).fetchall()]
        except sqlite3.Error as exc:
            raise RegistryError(f"Cannot read the job registry {self.path}: {exc}") from exc

    def _migrate(self) -> None:
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        done = {r[0] for r in self.conn.execute("SELECT name FROM _migrations")}
        if all(name in done for name, _ in MIGRATIONS):
            return
        with self.transaction() as conn:
            # Re-read inside the lock: another process may have migrated meanwhile.
            done = {r[0] for r in conn.execute("SELECT name FROM _migrations")}
            for name, statements in MIGRATIONS:
                if name in done:
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO _migrations VALUES (?, ?)", (name, _now()))

    def migrations(self) -> list[str]:
        """Names of the applied migrations, in order."""
        return [r["name"] for r in self._rows("SELECT name FROM _migrations ORDER BY name")]

    # -- runs -------------------------------------------------------------------------------------
    def ensure_run(
        self,
        run_id: str,
        *,
        backend: str,
        model: str | None,
        endpoint: str | None,
        pb_version: str,
        metadata: dict[str, str] | None,
        max_enqueued_tokens: int | None,
        budget_usd: float | None,
        est_cost_usd: float | None,
    ) -> None:
        now = _now()
        self._write(
            """INSERT INTO runs (run_id, created_at, updated_at, backend, model, endpoint,
                   pb_version, metadata, max_enqueued_tokens, budget_usd, est_cost_usd)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (run_id) DO UPDATE SET updated_at = excluded.updated_at,
                   max_enqueued_tokens = COALESCE(excluded.max_enqueued_tokens, max_enqueued_tokens)""",
            (
                run_id,
                now,
                now,
                backend,
                model,
                endpoint,
                pb_version,
                orjson.dumps(metadata or {}).decode(),
                max_enqueued_tokens,
                budget_usd,
                est_cost_usd,
            ),
        )

    def run(self, run_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        return rows[0] if rows else None

    def set_run_actual_cost(self, run_id: str) -> None:
        self._write(
            """UPDATE runs SET actual_cost_usd = (SELECT SUM(actual_cost_usd) FROM batches
                   WHERE batches.run_id = runs.run_id), updated_at = ? WHERE run_id = ?""",
            (_now(), run_id),
        )

    # -- shards -----------------------------------------------------------------------------------
    def live_shard(self, idem_key: str) -> dict[str, Any] | None:
        """The newest shard with this idempotency key that is queued or whose batch may still
        produce results or has produced them all (anything but failed / cancelling / cancelled /
        expired)."""
        rows = self._rows(
            f"""SELECT * FROM shards WHERE idem_key = ?
                AND status NOT IN ({",".join("?" * len(DEAD))})
                ORDER BY created_at DESC LIMIT 1""",
            (idem_key, *sorted(DEAD)),
        )
        return rows[0] if rows else None

    def shard(self, run_id: str, shard: int) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM shards WHERE run_id = ? AND shard = ?", (run_id, shard))
        return rows[0] if rows else None

    def shards(self, run_id: str) -> list[dict[str, Any]]:
        return self._rows("SELECT * FROM shards WHERE run_id = ? ORDER BY shard", (run_id,))

    def upsert_shard(self, row: dict[str, Any]) -> None:
        """Insert or replace a shard's description (status, batch and file ids included)."""
        now = _now()
        row = {"attempts": 0, "not_before": None, **row, "updated_at": now}
        row.setdefault("created_at", now)
        cols = list(row)
        self._write(
            f"""INSERT INTO shards ({",".join(cols)}) VALUES ({",".join("?" * len(cols))})
                ON CONFLICT (run_id, shard) DO UPDATE SET
                {",".join(f"{c} = excluded.{c}" for c in cols if c not in ("run_id", "shard", "created_at"))}""",
            [row[c] for c in cols],
        )

    def update_shard(self, run_id: str, shard: int, **fields: Any) -> None:
        fields["updated_at"] = _now()
        self._write(
            f"UPDATE shards SET {','.join(f'{k} = ?' for k in fields)} WHERE run_id = ? AND shard = ?",
            [*fields.values(), run_id, shard],
        )

    def active_tokens(self, *, backend: str, model: str | None) -> int:
        """Estimated prompt tokens of this backend's and model's batches still enqueued."""
        rows = self._rows(
            f"""SELECT COALESCE(SUM(est_input_tokens), 0) AS n FROM shards
                WHERE backend = ? AND model IS ? AND batch_id IS NOT NULL
                AND status IN ({",".join("?" * len(ACTIVE))})""",
            (backend, model, *sorted(ACTIVE)),
        )
        return int(rows[0]["n"])

    # -- files ------------------------------------------------------------------------------------
    def record_file(
        self, file_id: str, *, backend: str, sha256: str, filename: str, size: int
    ) -> None:
        self._write(
            """INSERT OR REPLACE INTO files (file_id, backend, sha256, filename, bytes, purpose,
                   created_at) VALUES (?, ?, ?, ?, ?, 'batch', ?)""",
            (file_id, backend, sha256, filename, size, _now()),
        )

    def files_for(self, *, backend: str, sha256: str) -> list[str]:
        rows = self._rows(
            "SELECT file_id FROM files WHERE backend = ? AND sha256 = ? ORDER BY created_at DESC",
            (backend, sha256),
        )
        return [r["file_id"] for r in rows]

    def forget_file(self, file_id: str) -> None:
        self._write("DELETE FROM files WHERE file_id = ?", (file_id,))

    # -- batches ----------------------------------------------------------------------------------
    def record_batch(
        self,
        batch: dict[str, Any],
        *,
        backend: str,
        run_id: str,
        shard: int,
        idem_key: str,
        sha256: str,
    ) -> None:
        """Store a batch (the API's object as a dict) and make it its shard's current batch, in
        one transaction."""
        now = _now()
        counts = batch.get("request_counts") or {}
        errors = (batch.get("errors") or {}).get("data") or []
        status = batch["status"]
        try:
            with self.transaction() as conn:
                conn.execute(
                    """INSERT INTO batches (batch_id, backend, run_id, shard, idem_key, sha256,
                           input_file_id, output_file_id, error_file_id, status, total, completed,
                           failed, errors, created_at, updated_at, terminal_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT (batch_id) DO UPDATE SET status = excluded.status,
                           output_file_id = excluded.output_file_id,
                           error_file_id = excluded.error_file_id, total = excluded.total,
                           completed = excluded.completed, failed = excluded.failed,
                           errors = excluded.errors, updated_at = excluded.updated_at,
                           terminal_at = excluded.terminal_at""",
                    (
                        batch["id"],
                        backend,
                        run_id,
                        shard,
                        idem_key,
                        sha256,
                        batch.get("input_file_id"),
                        batch.get("output_file_id"),
                        batch.get("error_file_id"),
                        status,
                        counts.get("total"),
                        counts.get("completed"),
                        counts.get("failed"),
                        orjson.dumps(errors).decode(),
                        batch.get("created_at"),
                        now,
                        now if status in TERMINAL else None,
                    ),
                )
                conn.execute(
                    """UPDATE shards SET batch_id = ?, input_file_id = ?, status = ?,
                           updated_at = ?, attempts = attempts + 1, not_before = NULL
                       WHERE run_id = ? AND shard = ?""",
                    (batch["id"], batch.get("input_file_id"), status, now, run_id, shard),
                )
        except sqlite3.Error as exc:
            raise RegistryError(
                f"Cannot record batch {batch['id']} in the job registry {self.path}: {exc}"
            ) from exc

    def update_batch(self, batch: dict[str, Any], *, actual_cost_usd: float | None = None) -> None:
        """Refresh a known batch's status, counts, files, errors and usage, and its shard's
        status when it is the shard's current batch."""
        now = _now()
        counts = batch.get("request_counts") or {}
        errors = (batch.get("errors") or {}).get("data") or []
        usage = batch.get("usage") or {}
        status = batch["status"]
        try:
            with self.transaction() as conn:
                conn.execute(
                    """UPDATE batches SET status = ?, output_file_id = ?, error_file_id = ?,
                           total = ?, completed = ?, failed = ?, errors = ?, input_tokens = ?,
                           cached_tokens = ?, output_tokens = ?,
                           actual_cost_usd = COALESCE(?, actual_cost_usd), updated_at = ?,
                           terminal_at = COALESCE(terminal_at, ?)
                       WHERE batch_id = ?""",
                    (
                        status,
                        batch.get("output_file_id"),
                        batch.get("error_file_id"),
                        counts.get("total"),
                        counts.get("completed"),
                        counts.get("failed"),
                        orjson.dumps(errors).decode(),
                        usage.get("input_tokens"),
                        (usage.get("input_tokens_details") or {}).get("cached_tokens"),
                        usage.get("output_tokens"),
                        actual_cost_usd,
                        now,
                        now if status in TERMINAL else None,
                        batch["id"],
                    ),
                )
                conn.execute(
                    "UPDATE shards SET status = ?, updated_at = ? WHERE batch_id = ?",
                    (status, now, batch["id"]),
                )
        except sqlite3.Error as exc:
            raise RegistryError(
                f"Cannot update batch {batch['id']} in the job registry {self.path}: {exc}"
            ) from exc

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM batches WHERE batch_id = ?", (batch_id,))
        if not rows:
            return None
        row = rows[0]
        row["errors"] = orjson.loads(row["errors"] or "[]")
        return row

    # -- reviews (report.py) ------------------------------------------------------------------
    def record_review(self, run_id: str, **fields: Any) -> None:
        """Insert or update the review of ``run_id`` (columns of ``reviews``); the first
        ``created_at`` is kept."""
        now = _now()
        row = {"run_id": run_id, **fields, "created_at": now, "updated_at": now}
        cols = list(row)
        self._write(
            f"""INSERT INTO reviews ({",".join(cols)}) VALUES ({",".join("?" * len(cols))})
                ON CONFLICT (run_id) DO UPDATE SET
                {",".join(f"{c} = excluded.{c}" for c in cols if c not in ("run_id", "created_at"))}""",
            [row[c] for c in cols],
        )

    def review(self, run_id: str) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM reviews WHERE run_id = ?", (run_id,))
        return rows[0] if rows else None

    def runs_for_portfolio(
        self,
        *,
        portfolio: str | None,
        keys_sha256: str | None = None,
        before: float | None = None,
        exclude: str | None = None,
    ) -> list[dict[str, Any]]:
        """The reviewed runs of one portfolio, newest run first: by its name, or for an unnamed
        portfolio (``portfolio=None``) by the hash of its sorted position keys; only runs made
        before ``before`` (a UNIX time) and other than ``exclude`` when given."""
        where = (
            "portfolio = ?" if portfolio is not None else "portfolio IS NULL AND keys_sha256 = ?"
        )
        params: list[Any] = [portfolio if portfolio is not None else keys_sha256]
        if before is not None:
            where += " AND run_at < ?"
            params.append(before)
        if exclude is not None:
            where += " AND run_id != ?"
            params.append(exclude)
        return self._rows(
            f"SELECT * FROM reviews WHERE {where} ORDER BY run_at DESC, created_at DESC", params
        )

    # -- frames -----------------------------------------------------------------------------------
    def jobs_frame(
        self,
        *,
        run_id: str | None = None,
        keys: Iterable[tuple[str, int]] | None = None,
    ) -> pd.DataFrame:
        """The jobs frame (docs/design.md): all shards, one run's, or the given (run_id, shard)
        pairs in the order given."""
        select = """SELECT s.run_id, s.shard, s.batch_id, s.status, s.input_file_id,
                b.output_file_id, b.error_file_id, s.sha256, s.n_requests,
                COALESCE(b.completed, 0) AS completed, COALESCE(b.failed, 0) AS failed,
                s.est_cost_usd, b.created_at, s.model, s.endpoint, s.path, s.backend,
                s.created_at AS _registered_at
            FROM shards s LEFT JOIN batches b ON b.batch_id = s.batch_id"""
        if keys is not None:
            wanted = list(dict.fromkeys((str(r), int(s)) for r, s in keys))
            by_key: dict[tuple[str, int], dict[str, Any]] = {}
            for r in {r for r, _ in wanted}:
                for row in self._rows(select + " WHERE s.run_id = ?", (r,)):
                    by_key[(row["run_id"], row["shard"])] = row
            rows = [by_key[k] for k in wanted if k in by_key]
        elif run_id is not None:
            rows = self._rows(select + " WHERE s.run_id = ? ORDER BY s.shard", (run_id,))
        else:
            rows = self._rows(select + " ORDER BY s.created_at DESC, s.run_id, s.shard")
        return jobs_frame_from_rows(rows)


def jobs_frame_from_rows(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=[*JOBS_COLUMNS])
    frame["shard"] = frame["shard"].astype("int64")
    for col in ("n_requests", "completed", "failed"):
        frame[col] = frame[col].fillna(0).astype("int64")
    frame["est_cost_usd"] = frame["est_cost_usd"].astype("float64")
    frame["created_at"] = pd.to_datetime(frame["created_at"], unit="s", utc=True)
    for col in ("batch_id", "input_file_id", "output_file_id", "error_file_id"):
        frame[col] = frame[col].astype(object).where(frame[col].notna(), None)
    return frame.reset_index(drop=True)


def open_registry(path: Path | str | None = None) -> Registry:
    """Open (and migrate) the registry at ``path``, default ``home()/registry.sqlite``."""
    return Registry(path)
