"""Bench: a 50,000-request batch on the local server's rules engine, through the real openai SDK.

The server runs in its own process (``python -m portfolio_batch.local``) so its peak RSS can be
sampled. Prints requests/s, end-to-end seconds (upload → completed → output downloaded) and the
server's peak RSS. Target: under 10 s and under 300 MB on a 2-core machine.

    .venv/bin/python bench/local_server.py [--requests 50000]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2
import openai
import orjson
import psutil

from portfolio_batch._requests import RISK_SCHEMA

SYSTEM = (
    "You are a portfolio risk analyst. For the position below, return a JSON object with "
    "risk_score (0-100), risk_level (low, medium or high), up to three drivers and a one-sentence "
    "rationale. Consider position weight, annualised volatility, beta and sector concentration."
)
SECTORS = ["Technology", "Energy", "Utilities", "Consumer Staples", "Financials", "Health Care"]


def write_requests(path: Path, n: int) -> int:
    with path.open("wb") as out:
        for i in range(n):
            position = {
                "ticker": f"T{i:05d}",
                "name": f"Company {i}",
                "sector": SECTORS[i % len(SECTORS)],
                "weight": round(0.0001 + (i % 97) / 2000, 5),
                "beta": round(0.5 + (i % 13) / 10, 2),
                "volatility": round(0.1 + (i % 31) / 50, 3),
            }
            body = {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {
                        "role": "user",
                        "content": "Assess this position:\n" + orjson.dumps(position).decode(),
                    },
                ],
                "max_tokens": 300,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "risk", "strict": True, "schema": RISK_SCHEMA},
                },
            }
            line = {
                "custom_id": f"pos-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body,
            }
            out.write(orjson.dumps(line) + b"\n")
    return path.stat().st_size


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pb-bench-") as tmp:
        tmpdir = Path(tmp)
        requests_path = tmpdir / "requests.jsonl"
        size = write_requests(requests_path, args.requests)
        port = free_port()
        env = {**os.environ, "PORTFOLIO_BATCH_HOME": str(tmpdir / "home")}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "portfolio_batch.local",
                "--port",
                str(port),
                "--data-dir",
                str(tmpdir / "data"),
            ],
            env=env,
            stderr=subprocess.PIPE,
        )
        proc = psutil.Process(server.pid)
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                try:
                    peak = max(peak, proc.memory_info().rss)
                except psutil.NoSuchProcess:
                    return
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx2.get(base + "/health", timeout=1).raise_for_status()
                    break
                except httpx2.HTTPError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("the server did not start") from None
                    time.sleep(0.05)
            client = openai.OpenAI(base_url=base + "/v1", api_key="bench")
            start = time.perf_counter()
            with requests_path.open("rb") as handle:
                uploaded = client.files.create(file=handle, purpose="batch")
            t_upload = time.perf_counter() - start
            batch = client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            while batch.status not in ("completed", "failed", "expired", "cancelled"):
                time.sleep(0.1)
                batch = client.batches.retrieve(batch.id)
            t_done = time.perf_counter() - start
            if batch.status != "completed" or not batch.output_file_id:
                raise SystemExit(f"batch ended {batch.status}: {batch.errors}")
            out_path = tmpdir / "output.jsonl"
            with client.files.with_streaming_response.content(batch.output_file_id) as response:
                response.stream_to_file(out_path)
            elapsed = time.perf_counter() - start
            with out_path.open("rb") as handle:
                n_out = sum(1 for _ in handle)
        finally:
            done.set()
            server.terminate()
            server.wait(timeout=10)
            sampler.join(timeout=1)
    counts = batch.request_counts
    print(f"requests:            {args.requests} ({size / 1e6:.1f} MB input, {n_out} output lines)")
    print(
        f"completed/failed:    {counts.completed if counts else '?'}/{counts.failed if counts else '?'}"
    )
    print(f"upload:              {t_upload:.2f} s")
    print(f"upload → completed:  {t_done:.2f} s")
    print(f"end to end:          {elapsed:.2f} s (upload → completed → output downloaded)")
    print(f"throughput:          {args.requests / elapsed:,.0f} requests/s")
    print(f"server peak RSS:     {peak / 2**20:.0f} MiB")
    ok = elapsed < 10 and peak < 300 * 2**20 and n_out == args.requests
    print("target (<10 s, <300 MB):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
