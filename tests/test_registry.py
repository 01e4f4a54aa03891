"""The job registry: migrations from empty, WAL, round trips of shards and batches."""

from __future__ import annotations

import sqlite3
from typing import Any

import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch._contract import JOBS_COLUMNS
from portfolio_batch._registry import MIGRATIONS, open_registry, registry_path
from portfolio_batch.errors import RegistryError


def _shard(run_id: str, shard: int, **extra: object) -> dict[str, object]:
    return {
        "run_id": run_id,
        "shard": shard,
        "idem_key": f"key-{run_id}-{shard}",
        "sha256": f"sha-{shard}",
        "path": f"/tmp/shard-{shard}.jsonl",
        "n_requests": 10 + shard,
        "est_input_tokens": 1000,
        "max_output_tokens": 500,
        "est_cost_usd": 0.01,
        "model": "gpt-4.1-mini",
        "endpoint": "/v1/chat/completions",
        "backend": "local:test",
        "status": "queued",
        **extra,
    }


def _run(reg, run_id: str, **extra: object) -> None:
    reg.ensure_run(
        run_id,
        backend="local:test",
        model="gpt-4.1-mini",
        endpoint="/v1/chat/completions",
        pb_version=pb.__version__,
        metadata={"project": "q3"},
        max_enqueued_tokens=extra.get("max_enqueued_tokens"),
        budget_usd=None,
        est_cost_usd=0.02,
    )


def test_migrations_from_empty_are_recorded_and_wal_is_on() -> None:
    path = registry_path()
    assert not path.exists()
    with open_registry() as reg:
        assert reg.migrations() == [name for name, _ in MIGRATIONS]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"_migrations", "runs", "shards", "batches", "files"} <= tables
    finally:
        conn.close()
    # Re-opening applies nothing twice.
    with open_registry() as reg:
        assert reg.migrations() == [name for name, _ in MIGRATIONS]


def test_many_processes_opening_a_new_registry_at_once_all_succeed(tmp_path) -> None:
    # Two notebooks or a notebook and the CLI starting together on a fresh home: SQLite's
    # switch to WAL answers "database is locked" at once, without its busy timeout, to all
    # but one opener. Every opener must get a working registry (this failed ~1 in 10 rounds).
    import threading

    for round_ in range(30):
        path = tmp_path / f"r{round_}.sqlite"
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def open_it(path=path, barrier=barrier, errors=errors) -> None:
            barrier.wait()
            try:
                with open_registry(path) as reg:
                    reg.migrations()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, (round_, errors)
        with open_registry(path) as reg:
            assert reg.migrations() == [name for name, _ in MIGRATIONS]


def test_the_switch_to_wal_waits_out_a_locked_database_but_not_other_errors() -> None:
    # The race above, made certain: SQLite refuses the switch with "database is locked" at once
    # (no busy timeout) while another opener holds the file; the switch is tried again.
    from portfolio_batch._registry import _switch_to_wal

    class Conn:
        def __init__(self, failures: list[str]) -> None:
            self.failures, self.calls = failures, 0

        def execute(self, sql: str) -> Any:
            self.calls += 1
            if self.failures:
                raise sqlite3.OperationalError(self.failures.pop(0))
            return type("Cursor", (), {"fetchone": lambda self: ("wal",)})()

    locked = Conn(["database is locked"] * 3)
    assert _switch_to_wal(locked) == "wal" and locked.calls == 4
    broken = Conn(["disk I/O error"])
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        _switch_to_wal(broken)
    assert broken.calls == 1


def test_jobs_empty_has_the_contract_columns() -> None:
    frame = pb.jobs()
    assert list(frame.columns) == list(JOBS_COLUMNS)
    assert frame.empty


def test_shard_and_batch_round_trip_into_the_jobs_frame() -> None:
    with open_registry() as reg:
        _run(reg, "run-a")
        reg.upsert_shard(_shard("run-a", 0))
        reg.upsert_shard(_shard("run-a", 1))
        batch = {
            "id": "batch_1",
            "status": "validating",
            "input_file_id": "file-1",
            "created_at": 1_700_000_000,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }
        reg.record_batch(
            batch,
            backend="local:test",
            run_id="run-a",
            shard=0,
            idem_key="key-run-a-0",
            sha256="sha-0",
        )
        reg.update_batch(
            {
                **batch,
                "status": "completed",
                "output_file_id": "file-out",
                "request_counts": {"total": 10, "completed": 9, "failed": 1},
                "errors": None,
                "usage": {"input_tokens": 900, "output_tokens": 300},
            },
            actual_cost_usd=0.005,
        )
        frame = reg.jobs_frame(run_id="run-a")
        assert reg.live_shard("key-run-a-0")["batch_id"] == "batch_1"
        assert reg.batch("batch_1")["actual_cost_usd"] == pytest.approx(0.005)
    assert list(frame.columns) == list(JOBS_COLUMNS)
    assert frame["shard"].tolist() == [0, 1]
    first, second = frame.iloc[0], frame.iloc[1]
    assert (first["batch_id"], first["status"], first["output_file_id"]) == (
        "batch_1",
        "completed",
        "file-out",
    )
    assert (first["completed"], first["failed"], first["n_requests"]) == (9, 1, 10)
    assert first["created_at"] == pd.Timestamp(1_700_000_000, unit="s", tz="UTC")
    assert second["batch_id"] is None and second["status"] == "queued"
    assert pd.isna(second["created_at"])

    # pb.jobs() is the same frame, displayed in a notebook as a table with a row per shard.
    listed = pb.jobs()
    assert sorted(listed["shard"]) == [0, 1]
    html = listed._repr_html_()
    assert html.startswith("<table") and "batch_1" in html and "queued" in html
    assert html.count("<tr") == 3  # header + two shards


def test_failed_cancelled_and_expired_shards_are_not_live() -> None:
    with open_registry() as reg:
        _run(reg, "run-b")
        reg.upsert_shard(_shard("run-b", 0, status="failed", batch_id="batch_x"))
        reg.upsert_shard(_shard("run-b", 1, status="cancelled"))
        reg.upsert_shard(_shard("run-b", 2, status="expired", batch_id="batch_y"))
        reg.upsert_shard(_shard("run-b", 3, status="completed", batch_id="batch_z"))
        assert reg.live_shard("key-run-b-0") is None
        assert reg.live_shard("key-run-b-1") is None
        # expired: the requests it did not finish must be sendable again
        assert reg.live_shard("key-run-b-2") is None
        assert reg.live_shard("key-run-b-3")["status"] == "completed"


def test_jobs_lists_newest_first_and_filters_by_run() -> None:
    with open_registry() as reg:
        _run(reg, "run-old")
        reg.upsert_shard(_shard("run-old", 0, created_at=1000.0))
        _run(reg, "run-new")
        reg.upsert_shard(_shard("run-new", 0, created_at=2000.0))
    assert pb.jobs()["run_id"].tolist() == ["run-new", "run-old"]
    assert pb.jobs(run_id="run-old")["run_id"].tolist() == ["run-old"]


def test_a_failed_write_rolls_back_and_raises_registry_error() -> None:
    with open_registry() as reg:
        _run(reg, "run-c")
        reg.upsert_shard(_shard("run-c", 0))
        reg.conn.execute(
            "CREATE TRIGGER no_batches BEFORE INSERT ON batches "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
        with pytest.raises(RegistryError, match=r"batch_z.*disk full"):
            reg.record_batch(
                {"id": "batch_z", "status": "validating", "input_file_id": "f"},
                backend="local:test",
                run_id="run-c",
                shard=0,
                idem_key="key-run-c-0",
                sha256="sha-0",
            )
        # The shard was not attached to a batch that was never stored.
        assert reg.shard("run-c", 0)["batch_id"] is None


def test_unwritable_home_names_the_path(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(RegistryError, match="not-a-dir"):
        open_registry(blocker / "registry.sqlite")


def test_a_registry_from_the_first_release_is_migrated_in_place(tmp_path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    for statement in MIGRATIONS[0][1]:
        conn.execute(statement)
    conn.execute("INSERT INTO _migrations VALUES ('m001_initial', 0)")
    conn.commit()
    conn.close()
    with open_registry(path) as reg:
        assert reg.migrations() == [name for name, _ in MIGRATIONS]
        columns = [r[1] for r in reg.conn.execute("PRAGMA table_info(shards)")]
        assert "creating_owner" in columns


def test_a_registry_that_cannot_use_wal_still_opens() -> None:
    # SQLite keeps its journal mode without an error where WAL is impossible (":memory:", file
    # systems without shared memory): opening must neither spin nor fail.
    import threading

    opened: list[list[str]] = []
    thread = threading.Thread(
        target=lambda: opened.append(open_registry(":memory:").migrations()), daemon=True
    )
    thread.start()
    thread.join(timeout=10)
    assert opened == [[name for name, _ in MIGRATIONS]]
