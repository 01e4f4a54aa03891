"""One embedded server per home (issue 11): processes sharing a home and no key share the server
the first one started, and a dead one is replaced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch._backend import embedded_server, reset_client
from portfolio_batch._home import home

ROOT = Path(__file__).resolve().parent.parent

# One process of the pair: ROUNDS times, on a fresh home each, the README's run, started at
# the same moment as the other process's (a file barrier), its results written as CSV.
ROUNDS = 10
_RUN = """
import json, os, sys, time
from pathlib import Path
import portfolio_batch as pb
from portfolio_batch._backend import reset_client
me, other, root, csv = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
for round_ in range(int(sys.argv[5])):
    os.environ["PORTFOLIO_BATCH_HOME"] = str(root / f"home{round_}")
    (root / f"ready-{round_}-{me}").touch()
    while not (root / f"ready-{round_}-{other}").exists():
        time.sleep(0.005)
    out = root / f"r{round_}-{me}"
    requests = pb.build_requests(pb.load_portfolio(csv))
    jobs = pb.poll(pb.submit(pb.to_jsonl(requests, out / "shards", max_requests=10)), progress=False)
    pb.aggregate_df(jobs, requests).to_csv(out / "results.csv", index=False)
    listed = sorted(b.id for b in pb.client().batches.list(limit=100))
    (out / "batches.json").write_text(json.dumps([sorted(jobs["batch_id"]), listed]))
    reset_client()  # as a new process would
"""


@pytest.fixture(autouse=True)
def _fresh_backend() -> Iterator[None]:
    reset_client()
    yield
    reset_client()


def _key_columns(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    keep = [c for c in frame.columns if c in {"custom_id", "risk_score", "risk_level", "batch_id"}]
    assert "custom_id" in keep and len(keep) > 1, frame.columns
    return frame[keep].sort_values("custom_id").reset_index(drop=True)


def test_two_processes_on_one_home_share_one_server_and_one_batch_per_shard(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    csv = str(ROOT / "testdata/portfolio.csv")
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _RUN, me, other, str(tmp_path), csv, str(ROUNDS)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me, other in (("a", "b"), ("b", "a"))
    ]
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-3000:]
    for round_ in range(ROUNDS):
        outs = [tmp_path / f"r{round_}-{me}" for me in "ab"]
        batches = [json.loads((out / "batches.json").read_text()) for out in outs]
        # the same 4 batches for both, and the server holds those alone: one per shard
        assert batches[0] == batches[1], (round_, batches)
        assert len(batches[0][0]) == 4 and batches[0][0] == batches[0][1], (round_, batches)
        first, second = (_key_columns(out / "results.csv") for out in outs)
        pd.testing.assert_frame_equal(first, second)


def test_a_dead_servers_record_is_replaced_and_a_live_one_is_shared() -> None:
    data_dir = home() / "local" / "rules"
    data_dir.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    stale = {
        "base_url": "http://127.0.0.1:9/v1",
        "pid": int(dead.stdout),
        "engine": "rules",
        "api_key": "sk-local-stale",
    }
    (data_dir / "server.json").write_text(json.dumps(stale))
    server = embedded_server("rules")
    assert server.base_url != stale["base_url"] and server.api_key != stale["api_key"]
    written = json.loads((data_dir / "server.json").read_text())
    assert written["pid"] == os.getpid() and written["base_url"] == server.base_url
    c = pb.client()
    uploaded = c.files.create(file=("x.jsonl", b"{}\n"), purpose="batch")
    # another process on the same home uses this server (and its key) rather than its own
    probe = (
        "import json, sys, portfolio_batch as pb\n"
        "from portfolio_batch._backend import embedded_server\n"
        "s = embedded_server('rules')\n"
        "print(json.dumps([s.base_url, pb.client().files.retrieve(sys.argv[1]).id]))"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    shared = subprocess.run(
        [sys.executable, "-c", probe, uploaded.id],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(shared.stdout) == [server.base_url, uploaded.id]


def test_a_client_follows_the_home_server_when_its_owner_process_exits() -> None:
    owner_code = (
        "import sys\n"
        "from portfolio_batch._backend import embedded_server\n"
        "print(embedded_server('rules').base_url, flush=True)\n"
        "sys.stdin.read()\n"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    owner = subprocess.Popen(
        [sys.executable, "-c", owner_code],
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert owner.stdout is not None and owner.stdin is not None
    owner_url = owner.stdout.readline().strip()
    c = pb.client(max_retries=0)  # the owner's server: no server started here
    assert str(c.base_url).rstrip("/") == owner_url
    uploaded = c.files.create(file=("x.jsonl", b"{}\n"), purpose="batch")
    owner.stdin.close()  # the notebook is closed while the CLI polls
    assert owner.wait(timeout=30) == 0
    # the same client reaches the replacement (started here) and the same data
    assert c.files.retrieve(uploaded.id).id == uploaded.id
    assert embedded_server("rules").base_url != owner_url
