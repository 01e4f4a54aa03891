"""Check the core install: ``pip install .`` with no extra, in a fresh venv, is enough for the
pipeline's core helpers, and leaves the extras out.

    $ python3 scripts/check_core_install.py          # make check-core; .ci/run runs it too
    $ python3 scripts/check_core_install.py --venv /tmp/pb-core --keep

In that venv (no ``-e``: the package as a user gets it, package data and all) it checks that
FastAPI, uvicorn, matplotlib, typer and ipywidgets are not importable, runs ``load_portfolio`` →
``build_requests`` → ``estimate_cost`` → ``to_jsonl`` on testdata/portfolio.csv, and that what
needs an extra says which: ``submit`` with no key names ``[local]``, ``report`` names ``[report]``
and the ``portfolio-batch`` command prints one line naming ``[cli]``. Exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The extras' main modules: none may be importable after the core install.
NOT_INSTALLED = ("fastapi", "uvicorn", "matplotlib", "typer", "ipywidgets")


def _clean_env(home: Path) -> dict[str, str]:
    """No key and no endpoint (submit must fall back to the embedded server), a scratch home."""
    drop = ("OPENAI_", "AZURE_OPENAI_", "PORTFOLIO_BATCH_", "PYTHONPATH", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PORTFOLIO_BATCH_HOME"] = str(home)
    return env


def outside() -> int:
    """Make the venv, install the core, run this script inside it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, help="where to make the venv (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the venv afterwards")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="pb-core-"))
    venv = args.venv or scratch / "venv"
    started = time.monotonic()
    try:
        if venv.exists():
            shutil.rmtree(venv)
        print(f"==> fresh venv {venv} ({sys.executable})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = venv / "bin" / "python"
        print("==> pip install . (no extras, no -e)", flush=True)
        t0 = time.monotonic()
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
            check=True,
        )
        print(f"    installed in {time.monotonic() - t0:.0f} s", flush=True)
        # From a scratch cwd: run from the work tree, `import portfolio_batch` would find the
        # sources instead of the installed package.
        done = subprocess.run(
            [str(python), str(Path(__file__).resolve()), "--inside", str(ROOT)],
            cwd=scratch,
            env=_clean_env(scratch / "home"),
        )
        verdict = "passed" if done.returncode == 0 else "FAILED"
        print(f"==> core install check {verdict} in {time.monotonic() - started:.0f} s")
        return done.returncode
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
            if args.venv:
                shutil.rmtree(args.venv, ignore_errors=True)


def inside(root: Path) -> int:
    """The checks, run by the core venv's Python."""
    import importlib.util

    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(f"    {'ok  ' if ok else 'FAIL'} {what}", flush=True)
        if not ok:
            failures.append(what)

    import portfolio_batch as pb

    where = Path(pb.__file__).resolve()
    check("site-packages" in where.parts, f"portfolio_batch {pb.__version__} from {where.parent}")
    for name in NOT_INSTALLED:
        check(importlib.util.find_spec(name) is None, f"{name} is not importable")

    out = Path(tempfile.mkdtemp(prefix="pb-core-out-"))
    portfolio = pb.load_portfolio(root / "testdata" / "portfolio.csv")
    requests = pb.build_requests(portfolio)
    costs = pb.estimate_cost(requests)
    manifest = pb.to_jsonl(requests, out / "batch", costs=costs)
    lines = sum(len(Path(p).read_bytes().splitlines()) for p in manifest["path"])
    check(len(requests) == len(portfolio) > 0, f"build_requests: {len(requests)} requests")
    check(float(costs["batch_cost_usd"].sum()) > 0, "estimate_cost: a batch estimate")
    check(lines == len(requests), f"to_jsonl: {len(manifest)} shard(s), {lines} lines")

    def raises_extra(what: str, extra: str, call: object) -> None:
        try:
            call()  # type: ignore[operator]
        except pb.MissingDependencyError as exc:
            named = f"pip install 'portfolio_batch[{extra}]'" in str(exc)
            check(named, f"{what} names [{extra}]: {exc}")
        except Exception as exc:
            check(False, f"{what} raised {type(exc).__name__}, not MissingDependencyError: {exc}")
        else:
            check(False, f"{what} raised no MissingDependencyError")

    raises_extra("submit with no key", "local", lambda: pb.submit(manifest, budget_usd=1.0))
    raises_extra("report", "report", lambda: pb.report(costs, path=out / "report.html"))

    cli = shutil.which("portfolio-batch", path=str(Path(sys.executable).parent))
    done = subprocess.run([str(cli), "--help"], capture_output=True, text=True)
    said = done.stderr.strip().splitlines()
    check(
        done.returncode == 2 and len(said) == 1 and "pip install 'portfolio_batch[cli]'" in said[0],
        f"portfolio-batch --help: exit {done.returncode} (2 expected), stderr {done.stderr.strip()!r}",
    )
    shutil.rmtree(out, ignore_errors=True)
    if failures:
        print(f"    {len(failures)} check(s) failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--inside":
        sys.exit(inside(Path(sys.argv[2])))
    sys.exit(outside())
