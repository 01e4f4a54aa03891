"""Scripted check: LiteLLM's batch functions run the Files + Batches flow against the local server.

LiteLLM is large, so it lives in its own virtual environment, never in the project's: the path is
``--venv``, else ``$LITELLM_VENV``, else ``/tmp/litellm-venv``; it is created (``pip install
litellm``, needs the package index) when it has no ``litellm``. A local server is started (rules
engine, a random key) and a small program run with that venv's Python calls
``litellm.create_file`` → ``litellm.create_batch`` → ``litellm.retrieve_batch`` (until it ends) →
``litellm.file_content`` with ``custom_llm_provider="openai"`` and the server's ``api_base`` and
key, on a 3-line JSONL of chat completion requests. Every check is printed, then
"N passed, M failed"; the exit code is non-zero when one failed. Not in the test suite: it needs
the network the first time.

    .venv/bin/python bench/litellm_check.py [--venv /tmp/litellm-venv] [--litellm-version 1.110.2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from portfolio_batch.local import serve

LITELLM_FLOW = r"""
import json, os, sys, time, traceback

def emit(step, **fields):
    print(json.dumps({"step": step, **fields}, default=str), flush=True)

try:
    import litellm
    from importlib.metadata import version
    emit("import", version=version("litellm"))
    creds = {"custom_llm_provider": "openai", "api_base": os.environ["BASE_URL"],
             "api_key": os.environ["API_KEY"]}
    lines = [json.dumps({"custom_id": f"litellm-{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": "gpt-4o-mini",
                                  "messages": [{"role": "user", "content": f"Say {i}"}]}})
             for i in range(3)]
    data = ("\n".join(lines) + "\n").encode()

    step = "create_file"
    f = litellm.create_file(file=("litellm.jsonl", data), purpose="batch", **creds)
    emit(step, obj=f.model_dump())

    step = "create_batch"
    b = litellm.create_batch(completion_window="24h", endpoint="/v1/chat/completions",
                             input_file_id=f.id, metadata={"sdk": "litellm"}, **creds)
    emit(step, obj=b.model_dump())

    step = "retrieve_batch"
    deadline = time.monotonic() + 60
    polls = 0
    while b.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.1)
        b = litellm.retrieve_batch(batch_id=b.id, **creds)
        polls += 1
    emit(step, obj=b.model_dump(), polls=polls)

    step = "file_content"
    content = litellm.file_content(file_id=b.output_file_id, **creds)
    emit(step, text=content.content.decode())
except Exception as exc:
    emit("error", at=locals().get("step", "import"), type=type(exc).__name__, message=str(exc),
         trace=traceback.format_exc())
    sys.exit(1)
"""

CUSTOM_IDS = [f"litellm-{i}" for i in range(3)]


def _venv_python(venv: Path, pin: str | None) -> Path:
    python = venv / "bin" / "python"
    has_litellm = python.exists() and (
        subprocess.run([str(python), "-c", "import litellm"], capture_output=True).returncode == 0
    )
    if not has_litellm:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        spec = f"litellm=={pin}" if pin else "litellm"
        subprocess.run([str(python), "-m", "pip", "install", "-q", spec], check=True)
    return python


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--venv",
        default=os.environ.get("LITELLM_VENV", "/tmp/litellm-venv"),
        help="virtual environment holding litellm (created when missing)",
    )
    parser.add_argument("--litellm-version", default=None, help="version to install if missing")
    args = parser.parse_args()
    python = _venv_python(Path(args.venv), args.litellm_version)

    with tempfile.TemporaryDirectory(prefix="pb-litellm-") as tmp:
        work = Path(tmp)
        (work / "flow.py").write_text(LITELLM_FLOW)
        with serve(engine="rules", data_dir=work / "data") as server:
            env = {**os.environ, "BASE_URL": server.base_url, "API_KEY": str(server.api_key)}
            env.pop("OPENAI_API_KEY", None)
            env.pop("OPENAI_BASE_URL", None)
            env.pop("OPENAI_API_BASE", None)
            run = subprocess.run(
                [str(python), "flow.py"],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )

    steps: dict[str, dict[str, Any]] = {}
    for raw in run.stdout.splitlines():
        try:
            answer = json.loads(raw)
        except json.JSONDecodeError:
            continue  # anything litellm itself printed
        steps[answer["step"]] = answer

    passed = failed = 0

    def check(name: str, ok: bool, detail: str = "") -> None:
        nonlocal passed, failed
        passed, failed = passed + ok, failed + (not ok)
        print(f"[{'PASS' if ok else 'FAIL'}] {name}" + (f": {detail}" if detail else ""))

    check(
        "litellm imports in its venv", "import" in steps, steps.get("import", {}).get("version", "")
    )
    if "error" in steps:
        err = steps["error"]
        check(
            f"flow ran without error (failed at {err['at']})",
            False,
            f"{err['type']}: {err['message']}",
        )
        print(err["trace"], file=sys.stderr)
    elif run.returncode != 0:
        check("flow ran without error", False, f"exit {run.returncode}")
        print(run.stdout + run.stderr, file=sys.stderr)

    f = steps.get("create_file", {}).get("obj") or {}
    check(
        "create_file returned a batch file",
        bool(f.get("id")) and f.get("purpose") == "batch",
        f"id={f.get('id')} purpose={f.get('purpose')} bytes={f.get('bytes')}",
    )
    b = steps.get("create_batch", {}).get("obj") or {}
    check(
        "create_batch returned a batch for that file",
        bool(b.get("id")) and b.get("input_file_id") == f.get("id") and bool(f.get("id")),
        f"id={b.get('id')} status={b.get('status')} input_file_id={b.get('input_file_id')}",
    )
    r = steps.get("retrieve_batch", {})
    final = r.get("obj") or {}
    counts = final.get("request_counts") or {}
    check(
        "retrieve_batch polled the batch to completed",
        final.get("status") == "completed" and final.get("id") == b.get("id"),
        f"status={final.get('status')} after {r.get('polls')} polls, request_counts={counts}",
    )
    check(
        "completed batch has an output file and 3/3 requests done",
        bool(final.get("output_file_id"))
        and counts.get("completed") == 3
        and counts.get("total") == 3,
        f"output_file_id={final.get('output_file_id')}",
    )
    text = steps.get("file_content", {}).get("text")
    out = [json.loads(line) for line in (text or "").splitlines() if line.strip()]
    check("file_content returned 3 output lines", len(out) == 3, f"{len(out)} lines")
    statuses = [(o.get("response") or {}).get("status_code") for o in out]
    check(
        "every output line has status 200",
        len(out) == 3 and all(s == 200 for s in statuses),
        str(statuses),
    )
    ids = sorted(o.get("custom_id") for o in out)
    check("output custom_ids match the input", ids == CUSTOM_IDS, str(ids))

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
