"""Secure by default: the embedded server and ``LocalServer`` require a random key made at each
start; the foreground server takes its key from the environment, a file or a prompt, never from
the command line, and warns loudly off loopback; uploaded portfolios and results are 0600 in 0700
directories."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from test_local_support import create_batch, default_sigint, risk_line, upload, wait

import portfolio_batch as pb
from portfolio_batch._backend import reset_client
from portfolio_batch.local import serve


def _status(base_url: str, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx2.get(f"{base_url}/files", headers=headers).status_code


def test_the_embedded_server_requires_its_own_random_key() -> None:
    try:
        client = pb.client()  # no key in the environment: the embedded server
        base_url = str(client.base_url).rstrip("/")
        assert client.files.list().data == []  # its client has the key
        assert client.api_key.startswith("sk-local-") and len(client.api_key) > 30
        assert _status(base_url, None) == 401
        assert _status(base_url, "local-no-key") == 401  # the old shared key is no key at all
        assert _status(base_url, client.api_key + "x") == 401
        first = client.api_key
    finally:
        reset_client()
    try:
        assert pb.client().api_key != first  # a new key at each start
    finally:
        reset_client()


def test_a_local_server_requires_a_new_random_key_at_each_start(tmp_path: Path) -> None:
    with serve(data_dir=tmp_path / "data") as server:
        key = server.api_key
        assert key and key.startswith("sk-local-")
        with pytest.raises(openai.AuthenticationError) as info:
            server.client(api_key="sk-guess").files.list()
        assert info.value.body["code"] == "invalid_api_key"
        assert _status(server.base_url, None) == 401
        assert server.client().files.list().data == []
        # known to this process and to the data dir's state file (0600), for this user's others
        state = tmp_path / "data" / "server.json"
        assert json.loads(state.read_text()) == {
            "base_url": server.base_url,
            "pid": os.getpid(),
            "engine": "rules",
            "api_key": key,
        }
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert not state.exists()  # gone with the server
    with server:  # started again: another key, and the old one is refused
        assert server.api_key != key
        assert _status(server.base_url, key) == 401


def test_files_are_0600_and_directories_0700(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serve(data_dir=data) as server:
        client = server.client()
        upload(client, [risk_line(0)])
        batch, _ = wait(client, create_batch(client, [risk_line(1), {"custom_id": "x"}]).id)
        assert batch["output_file_id"] or batch["status"] == "failed"
        bad = create_batch(
            client, [risk_line(2), {**risk_line(3), "body": {"model": "gpt-4o-mini"}}]
        )
        done, _ = wait(client, bad.id)
        assert done["output_file_id"] and done["error_file_id"]
        paths = list(data.rglob("*"))
    files = [p for p in paths if p.is_file()]
    assert len(files) >= 10  # inputs, outputs, errors and their objects, batches
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(0o600)}
    directories = [data, *(p for p in paths if p.is_dir())]
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in directories} == {oct(0o700)}


def test_the_home_is_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "new-home"
    monkeypatch.setenv("PORTFOLIO_BATCH_HOME", str(home))
    try:
        client = pb.client()
        upload(client, [risk_line(0)])
    finally:
        reset_client()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    data = home / "local" / "rules"  # the embedded server's data dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for path in data.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path


def _server(tmp_path: Path, *args: str, stdin: str | None = None, **env: str) -> Any:
    return subprocess.Popen(
        [sys.executable, "-m", "portfolio_batch.local", "--port", "0", *args],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PORTFOLIO_BATCH_HOME": str(tmp_path / "home"), **env},
        preexec_fn=default_sigint,
    )


def _url(proc: Any) -> str:
    line = proc.stderr.readline()
    match = re.search(r"(http://[\d.]+:\d+/v1)", line)
    assert match, line
    return match.group(1)


def _stop(proc: Any) -> str:
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=20)
    proc.stdin.close()
    return str(proc.stderr.read())


@pytest.mark.parametrize("how", ["env", "stdin", "file"])
def test_the_foreground_server_takes_its_key_without_the_command_line(
    tmp_path: Path, how: str
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-team-key\n")
    args = {"env": (), "stdin": ("--api-key",), "file": ("--api-key-file", str(key_file))}[how]
    env = {"PORTFOLIO_BATCH_SERVER_KEY": "sk-team-key"} if how == "env" else {}
    proc = _server(tmp_path, *args, **env)
    try:
        if how == "stdin":
            assert proc.stdin is not None
            proc.stdin.write("sk-team-key\n")
            proc.stdin.flush()
        url = _url(proc)
        assert _status(url, "sk-team-key") == 200
        assert _status(url, "sk-other") == 401
        assert _status(url, None) == 401
        # the key is not in the process's command line, which `ps` shows to every user
        assert "sk-team-key" not in " ".join(psutil_cmdline(proc.pid))
    finally:
        _stop(proc)


def psutil_cmdline(pid: int) -> list[str]:
    import psutil

    return list(psutil.Process(pid).cmdline())


def test_a_key_on_the_command_line_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "portfolio_batch.local", "--api-key", "sk-visible"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "ps" in result.stderr and "PORTFOLIO_BATCH_SERVER_KEY" in result.stderr


@pytest.mark.parametrize("keyed", [False, True])
def test_a_non_loopback_host_gets_a_loud_warning(tmp_path: Path, keyed: bool) -> None:
    env = {"PORTFOLIO_BATCH_SERVER_KEY": "sk-team-key"} if keyed else {}
    proc = _server(tmp_path, "--host", "0.0.0.0", **env)
    try:
        banner = proc.stderr.readline()
        assert "0.0.0.0" in banner
    finally:
        err = _stop(proc)
    assert "WARNING: listening on 0.0.0.0" in err
    if keyed:
        assert "plain HTTP" in err
    else:
        assert "NO API KEY" in err and "PORTFOLIO_BATCH_SERVER_KEY" in err


def test_loopback_without_a_key_says_any_key_is_accepted(tmp_path: Path) -> None:
    proc = _server(tmp_path)
    try:
        banner = proc.stderr.readline()
        assert "any API key accepted" in banner
    finally:
        err = _stop(proc)
    assert "WARNING" not in err


def test_downloaded_results_are_0600_in_a_home_that_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A PORTFOLIO_BATCH_HOME that already existed keeps its mode (say 0755): the results cached
    # in it must still be readable by their owner only.
    from portfolio_batch._download import download_file

    home = tmp_path / "shared-home"
    home.mkdir(mode=0o755)
    monkeypatch.setenv("PORTFOLIO_BATCH_HOME", str(home))
    with serve(data_dir=tmp_path / "data") as server:
        client = server.client()
        batch, _ = wait(client, create_batch(client, [risk_line(0)]).id)
        path = download_file(batch["output_file_id"], client=client)
    assert path.parent.parent == home and path.read_bytes()
    assert oct(stat.S_IMODE(path.stat().st_mode)) == oct(0o600)
