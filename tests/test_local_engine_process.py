"""Engines in a child process of the local server: a native crash (SIGSEGV) in the engine fails the
request it was answering (or the batch, if it keeps crashing), never the server, the CLI or the
notebook kernel the server runs in. The crashing engines are in tests/engines/crashing.py."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import openai
import psutil
import pytest
from test_local_support import create_batch, read_lines, risk_body, risk_line, wait

from portfolio_batch.local import LocalServer, serve
from tests.engines.crashing import CRASH_MARK

ROOT = Path(__file__).resolve().parent.parent
ON_MARKED = "tests.engines.crashing:on_marked"
ALWAYS = "tests.engines.crashing:always"
CRASHED = "engine crashing crashed (SIGSEGV)"


def engine_children() -> list[psutil.Process]:
    """This process's engine child processes that are still alive."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any("portfolio_batch.local.engines._child" in arg for arg in child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def test_a_crash_fails_only_its_request_and_the_engine_restarts(tmp_path: Path) -> None:
    with serve(engine=ON_MARKED, data_dir=tmp_path / "data") as server:
        client = server.client(max_retries=0)
        first_pid = getattr(server.state.executor.engine, "pid", None)
        lines = [risk_line(i, ticker=CRASH_MARK if i == 3 else f"T{i}") for i in range(6)]
        batch, _ = wait(client, create_batch(client, lines).id, timeout=60)

        assert batch["status"] == "completed"
        assert batch["request_counts"] == {"total": 6, "completed": 5, "failed": 1}
        (error,) = read_lines(client, batch["error_file_id"])
        assert error["custom_id"] == "pos-3" and error["error"] is None
        assert error["response"]["status_code"] == 500
        body = error["response"]["body"]["error"]
        assert body["code"] == "engine_crashed" and body["type"] == "server_error"
        assert CRASHED in body["message"] and "restarts it" in body["message"]
        answered = read_lines(client, batch["output_file_id"])
        assert sorted(line["custom_id"] for line in answered) == [
            f"pos-{i}" for i in (0, 1, 2, 4, 5)
        ]

        # The server lives on, with a new child; a crash on the synchronous route is a 500.
        assert server.state.executor.engine.pid not in (None, first_pid)
        with pytest.raises(
            openai.InternalServerError, match=r"engine crashing crashed \(SIGSEGV\)"
        ):
            client.chat.completions.create(**risk_body(7, ticker=CRASH_MARK))
        reply = client.chat.completions.create(**risk_body(8))
        assert reply.choices[0].finish_reason == "stop"
        assert len(engine_children()) == 1


def test_an_engine_that_always_crashes_fails_the_batch(tmp_path: Path) -> None:
    with serve(engine=ALWAYS, data_dir=tmp_path / "data") as server:
        client = server.client(max_retries=0)
        batch, _ = wait(client, create_batch(client, [risk_line(i) for i in range(10)]).id)

        assert batch["status"] == "failed" and batch["failed_at"] is not None
        (error,) = batch["errors"]["data"]
        assert error["code"] == "engine_crashed" and error["line"] is None
        assert f"{CRASHED} on 3 requests in a row" in error["message"]
        # Three tries, each a 500 line; the seven requests after them were not run.
        assert batch["request_counts"] == {"total": 10, "completed": 0, "failed": 3}
        lines = read_lines(client, batch["error_file_id"])
        assert [line["response"]["status_code"] for line in lines] == [500, 500, 500]
        assert batch["output_file_id"] is None

        # The server still answers, and a new batch gets its own tries.
        assert client.files.list().data
        again, _ = wait(client, create_batch(client, [risk_line(0)]).id)
        assert again["status"] == "completed"
        assert again["request_counts"] == {"total": 1, "completed": 0, "failed": 1}


def test_an_engine_that_crashes_while_loading_fails_the_batch_at_once(tmp_path: Path) -> None:
    with serve(engine="tests.engines.crashing:on_load", data_dir=tmp_path / "data") as server:
        client = server.client(max_retries=0)
        batch, _ = wait(client, create_batch(client, [risk_line(i) for i in range(5)]).id)
        assert batch["status"] == "failed"
        message = batch["errors"]["data"][0]["message"]
        assert f"{CRASHED} while loading" in message
        assert batch["request_counts"]["failed"] == 1


def test_bad_engine_names_and_imports_are_input_errors(tmp_path: Path) -> None:
    from portfolio_batch.errors import InputError

    with pytest.raises(InputError, match=r"package\.module:factory"):
        LocalServer(engine="no such engine", data_dir=tmp_path / "a").start()
    with pytest.raises(InputError, match=r"'tests\.engines\.missing:make' cannot be imported"):
        LocalServer(engine="tests.engines.missing:make", data_dir=tmp_path / "b").start()
    assert engine_children() == []


def test_stopping_the_server_stops_the_engine_process(tmp_path: Path) -> None:
    server = LocalServer(engine=ON_MARKED, data_dir=tmp_path / "data").start()
    (child,) = engine_children()
    assert child.pid == server.state.executor.engine.pid != os.getpid()
    assert server.client().chat.completions.create(**risk_body(1)).choices
    server.stop()
    assert not child.is_running()
    assert engine_children() == []


def test_the_engine_process_exits_when_the_server_process_dies(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from portfolio_batch.local import LocalServer
        server = LocalServer(engine={ON_MARKED!r}, data_dir=sys.argv[1]).start()
        print(server.state.executor.engine.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        assert child.is_running()
        parent.kill()
        parent.wait()
        child.wait(timeout=10)  # psutil.TimeoutExpired if it outlives its parent
    finally:
        parent.kill()
        parent.wait()


def test_cli_with_a_crashing_engine_exits_with_a_clear_message_and_no_core_dump(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("PORTFOLIO_BATCH_DEBUG", None)
    command = [
        sys.executable,
        *("-m", "portfolio_batch.cli", "analyze-risk", str(ROOT / "testdata" / "portfolio.csv")),
        *("--batch", "--yes", "--engine", ALWAYS, "--out", str(out)),
    ]
    # Core dumps allowed (core_pattern "core" writes them into the cwd): none may appear.
    proc = subprocess.run(
        ["/bin/sh", "-c", 'ulimit -c unlimited 2>/dev/null; exec "$@"', "sh", *command],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 3, proc.stderr  # partial results: written, every request failed
    assert "Batch failed:" in proc.stderr and f"{CRASHED} on 3 requests in a row" in proc.stderr
    assert "Traceback" not in proc.stderr and "Segmentation fault" not in proc.stderr
    assert (out / "results.csv").exists() and (out / "report.html").exists()
    assert not [p for p in tmp_path.rglob("core*") if p.is_file()]
    time.sleep(0.2)
    assert engine_children() == []


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None and not os.environ.get("PB_REQUIRE_LLM"),
    reason="llama-cpp-python is not installed (pip install 'portfolio_batch[local-llm]')",
)
def test_smollm2_runs_in_a_child_that_is_restarted_after_a_crash(tmp_path: Path) -> None:
    with serve(engine="smollm2", data_dir=tmp_path / "data") as server:
        client = server.client(max_retries=0)
        ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
        assert client.chat.completions.create(**ask, max_tokens=4).choices
        (child,) = engine_children()
        assert child.pid == server.state.executor.engine.pid
        assert "llama_cpp" not in sys.modules  # the native library is not loaded in this process

        child.send_signal(signal.SIGSEGV)  # what a bad llama.cpp build does in decode
        # Not child.wait(): psutil would reap it, and the server would not see the signal.
        deadline = time.monotonic() + 10
        while child.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(**ask, max_tokens=4)
        message = info.value.body["message"]
        assert "engine smollm2 crashed (SIGSEGV)" in message and "llama-cpp-python" in message
        assert client.chat.completions.create(**ask, max_tokens=4).choices  # a new child
        (restarted,) = engine_children()
        assert restarted.pid != child.pid
