"""Aggregation bench: ``aggregate_df`` against pandas and against the raw parse limit.

    python bench/aggregate.py              # 50,000-line file (~78 MB), plus the 4x memory check
    python bench/aggregate.py --no-4x      # only the 50,000-line comparison

Each measurement runs in its own subprocess so its peak RSS is its own. Printed, in one run:
- ours: ``aggregate_df(None, requests, output_files=[...], error_files=[...])``, time and peak RSS;
- pandas: ``pandas.read_json(lines=True)`` + ``json_normalize`` of the same file;
- raw limit: ``orjson.loads`` of every line plus of its answer text, nothing else.
Times are the best of ``--repeat`` runs. Peak RSS is measured during the call only (the kernel's
peak counter is reset after the requests frame is loaded), as MB above the RSS before the call.
Data comes from ``bench/make_output.py`` into ``bench/data/`` (generated when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MB = 1024 * 1024


def _paths(lines: int, data: Path) -> dict[str, Path]:
    from make_output import make

    paths = {
        k: data / f"{k}-{lines}.{ext}"
        for k, ext in (("output", "jsonl"), ("errors", "jsonl"), ("custom_ids", "txt"))
    }
    if not all(p.exists() for p in paths.values()):
        print(f"generating {lines} lines into {data} ...", flush=True)
        make(data, lines)
    return paths


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _requests(ids_path: Path) -> Any:
    import pandas as pd

    from portfolio_batch._requests import RISK_SCHEMA

    ids = ids_path.read_text().split()
    body = {
        "model": "gpt-4o-mini",
        "max_tokens": 400,
    }  # shared: the bodies are not what is measured
    req = pd.DataFrame(
        {
            "custom_id": ids,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": [body] * len(ids),
            "ticker": [cid.split("-")[1] for cid in ids],
        },
        index=pd.Index(ids, name="custom_id"),
    )
    req.attrs.update(schema=RISK_SCHEMA, model="gpt-4o-mini", key="ticker")
    return req


def _ours(paths: dict[str, Path], req: Any) -> Any:
    from portfolio_batch._aggregate import aggregate_df

    return aggregate_df(None, req, output_files=[paths["output"]], error_files=[paths["errors"]])


def _pandas(paths: dict[str, Path], req: Any) -> Any:
    import pandas as pd

    df = pd.read_json(paths["output"], lines=True)
    return pd.json_normalize(df.to_dict(orient="records"))


def _raw(paths: dict[str, Path], req: Any) -> None:
    import orjson

    with open(paths["output"], "rb") as fh:
        for raw in fh:
            line = orjson.loads(raw)
            try:
                content = line["response"]["body"]["choices"][0]["message"]["content"]
                orjson.loads(content)
            except (KeyError, IndexError, TypeError, orjson.JSONDecodeError):
                pass


def _frame_bytes(df: Any) -> int:
    """The frame's memory, counting what list cells hold too (``memory_usage(deep=True)`` counts a
    list cell's own size only, not the strings in it, e.g. the ``drivers`` column)."""
    total = int(df.memory_usage(deep=True).sum())
    for col in df.select_dtypes(include="object").columns:
        for cell in df[col]:
            if isinstance(cell, list):
                total += sum(sys.getsizeof(x) for x in cell)
    return total


def child(kind: str, lines: int, data: Path, repeat: int) -> dict[str, Any]:
    """One measurement in this (fresh) process."""
    import logging

    logging.disable(logging.WARNING)  # the file's deliberate failures would log per line
    paths = _paths(lines, data)
    req = _requests(paths["custom_ids"])
    import orjson  # noqa: F401  (imports are not what is measured)
    import pandas  # noqa: F401

    import portfolio_batch._aggregate  # noqa: F401

    fn = {"ours": _ours, "pandas": _pandas, "raw": _raw}[kind]
    before = _rss()
    exact = _reset_peak()
    best = best_cpu = float("inf")
    frame_mb = None
    for n in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(paths, req)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
        if n == 0:
            peak = _peak()
            if kind == "ours":
                frame_mb = _frame_bytes(out) / MB
        del out
    return {
        "kind": kind,
        "lines": lines,
        "seconds": best,
        "cpu_seconds": best_cpu,
        "peak_mb": (peak - before) / MB,
        "peak_exact": exact,
        "frame_mb": frame_mb,
        "file_mb": paths["output"].stat().st_size / 1e6,
    }


def run(kind: str, lines: int, data: Path, repeat: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--lines",
        str(lines),
        "--data",
        str(data),
        "--repeat",
        str(repeat),
    ]
    env = {**os.environ, "PORTFOLIO_BATCH_HOME": str(data / "home")}
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lines", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument(
        "--no-4x", dest="four", action="store_false", help="skip the 4x-file memory check"
    )
    ap.add_argument("--child", choices=["ours", "pandas", "raw"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.lines, args.data, args.repeat)))
        return
    _paths(args.lines, args.data)
    res = {k: run(k, args.lines, args.data, args.repeat) for k in ("raw", "ours", "pandas")}
    print(
        f"\naggregate bench: {args.lines:,} output lines, {res['ours']['file_mb']:.1f} MB, best of {args.repeat}"
    )
    print(f"{'':<34}{'time s':>9}{'CPU s':>9}{'peak RSS MB':>14}")
    labels = {
        "ours": "aggregate_df (ours)",
        "pandas": "pandas read_json + json_normalize",
        "raw": "raw limit (orjson line + answer)",
    }
    for k in ("ours", "pandas", "raw"):
        r = res[k]
        print(f"{labels[k]:<34}{r['seconds']:>9.3f}{r['cpu_seconds']:>9.3f}{r['peak_mb']:>14.0f}")
    ours, cpu = res["ours"]["seconds"], res["ours"]["cpu_seconds"]
    print(
        f"\nvs pandas: {res['pandas']['seconds'] / ours:.1f}x faster "
        f"(CPU {res['pandas']['cpu_seconds'] / cpu:.1f}x; target >= 5x)"
    )
    print(
        f"vs raw limit: {ours / res['raw']['seconds']:.2f}x the raw time "
        f"(CPU {cpu / res['raw']['cpu_seconds']:.2f}x; target <= 1.5x)"
    )
    print(
        "(CPU time is the steadier figure on a shared machine: other processes do not inflate it)"
    )
    if args.four:
        _paths(args.lines * 4, args.data)
        big = run("ours", args.lines * 4, args.data, 1)
        grow_rss = big["peak_mb"] - res["ours"]["peak_mb"]
        grow_frame = big["frame_mb"] - res["ours"]["frame_mb"]
        print(
            f"\n4x file ({args.lines * 4:,} lines, {big['file_mb']:.0f} MB): {big['seconds']:.2f} s, "
            f"peak RSS +{big['peak_mb']:.0f} MB (was +{res['ours']['peak_mb']:.0f} MB)"
        )
        print(
            f"peak RSS grew {grow_rss:.0f} MB; the result frame grew {grow_frame:.0f} MB "
            f"({res['ours']['frame_mb']:.0f} -> {big['frame_mb']:.0f} MB); "
            f"excess {grow_rss - grow_frame:.0f} MB (target <= 50 MB)"
        )
    if not res["ours"]["peak_exact"]:
        print("note: peak RSS could not be reset (no /proc/self/clear_refs); it includes the setup")


if __name__ == "__main__":
    main()
