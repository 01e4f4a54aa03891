"""Steps the commands share: choosing the backend, polling with live progress and Ctrl-C handling,
and aggregating a run from the registry."""

from __future__ import annotations

import os
import shlex
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text

from portfolio_batch.cli._console import EXIT_INTERRUPTED, err, error_line
from portfolio_batch.cli._progress import BatchProgress
from portfolio_batch.cli._runs import check_shards, load_run_info, requests_from_shards
from portfolio_batch.errors import BatchFailedError, InputError, SimulatedBackendWarning

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "aggregate_run",
    "client_for_run",
    "engine_of",
    "has_api_key",
    "make_client",
    "poll_run",
    "resume_command",
]


def has_api_key() -> bool:
    """A real backend is configured: requests leave this machine (and cost money). The same
    decision as ``pb.client()``'s, so the CLI never says "the API" while answers come from the
    local server (a half-configured Azure raises ``InputError`` naming the missing variable)."""
    from portfolio_batch._backend import configured_backend

    return configured_backend() is not None


def engine_of(jobs: pd.DataFrame) -> str | None:
    """The embedded engine a run was submitted to (``backend`` ``local:embedded:<engine>``)."""
    for backend in jobs["backend"].dropna().astype(str):
        if backend.startswith("local:embedded:"):
            return backend.removeprefix("local:embedded:")
    return None


def make_client(
    engine: str | None, *, default_engine: str | None = None, provider: str | None = None
) -> Any:
    """``pb.client()``; ``--engine`` only picks the embedded server's engine, so with a key it is
    ignored (and we say so). ``default_engine`` is the engine of the run being resumed.
    ``provider`` (``--provider``, else from ``--model``): ``anthropic``/``gemini`` run on that
    provider with its key, else on the embedded server's routes for it; ``azure`` needs Azure
    configured."""
    import portfolio_batch as pb
    from portfolio_batch._backend import PROVIDER_KEYS, configured_backend

    if provider in PROVIDER_KEYS:
        return _provider_client(provider, engine, default_engine)
    if provider == "groq":  # OpenAI's batch API at Groq; needs GROQ_API_KEY (an InputError if not)
        return pb.client(provider=provider)
    if provider == "azure" and configured_backend() != "azure":
        raise InputError(
            "--provider azure needs Azure OpenAI configured: set AZURE_OPENAI_ENDPOINT, "
            "AZURE_OPENAI_API_KEY and OPENAI_API_VERSION (and leave OPENAI_API_KEY unset, which "
            "would select OpenAI)"
        )
    if has_api_key():
        if engine is not None:
            err.print(
                Text(
                    f"--engine {engine} is ignored: an API key is set, so requests go to "
                    f"{os.environ.get('OPENAI_BASE_URL') or 'the API'}, not the embedded server.",
                    style="yellow",
                )
            )
        return pb.client()
    if os.environ.get("OPENAI_BASE_URL"):
        err.print(
            Text(
                f"OPENAI_BASE_URL is set ({os.environ['OPENAI_BASE_URL']}) but OPENAI_API_KEY is not, "
                "so it is not used. To use that server, set OPENAI_API_KEY (any non-empty value "
                "for a local server).",
                style="yellow",
            )
        )
    from portfolio_batch._backend import simulated_notice

    engine = engine or default_engine
    name = engine or os.environ.get("PORTFOLIO_BATCH_ENGINE") or "rules"
    # Highlighted, every run: the user must not take simulated answers for an LLM's.
    err.print(Text(simulated_notice(name), style="bold yellow"))
    with warnings.catch_warnings():  # the line above says it; no Python warning text as well
        warnings.simplefilter("ignore", SimulatedBackendWarning)
        return pb.client(engine=engine) if engine else pb.client()


def _provider_client(provider: str, engine: str | None, default_engine: str | None) -> Any:
    """``pb.client(provider=...)`` for Anthropic, Gemini, Mistral or Together, saying when
    answers are simulated."""
    import portfolio_batch as pb
    from portfolio_batch._backend import PROVIDER_KEYS, simulated_notice

    names = PROVIDER_KEYS[provider]
    if any(os.environ.get(v) for v in names):
        if engine is not None:
            err.print(
                Text(
                    f"--engine {engine} is ignored: {names[0]} is set, so requests go to "
                    f"{provider}, not the embedded server.",
                    style="yellow",
                )
            )
        return pb.client(provider=provider)
    engine = engine or default_engine
    if engine is None and has_api_key():  # OpenAI/Azure keyed: pb.client names the missing key
        return pb.client(provider=provider)
    name = engine or os.environ.get("PORTFOLIO_BATCH_ENGINE") or "rules"
    err.print(Text(simulated_notice(name, provider=provider), style="bold yellow"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulatedBackendWarning)
        return pb.client(provider=provider, engine=engine)


def client_for_run(jobs: pd.DataFrame, engine: str | None) -> Any:
    """A client for resuming ``jobs``; refuses one that talks to another backend than the run's."""
    from portfolio_batch._backend import backend_name

    client = make_client(engine, default_engine=engine_of(jobs))
    used = sorted(set(jobs["backend"].dropna().astype(str)))
    now = backend_name(client)
    if used and now not in used:
        raise InputError(
            f"run {jobs['run_id'].iloc[0]} was submitted to {', '.join(used)} but this process "
            f"talks to {now}, where its batches are not. Set OPENAI_BASE_URL / OPENAI_API_KEY "
            "(or unset them for the embedded server, with --engine) as when the run was submitted."
        )
    return client


def resume_command(run_id: str, out_dir: Path | None) -> str:
    parts = ["portfolio-batch", "jobs", "resume", run_id]
    if out_dir is not None:
        parts += ["--out", str(out_dir)]
    return shlex.join(parts)


def poll_run(jobs: pd.DataFrame, *, client: Any, out_dir: Path | None) -> pd.DataFrame:
    """Poll to the end with a live status per batch; on Ctrl-C print how to resume, exit 130."""
    import portfolio_batch as pb

    run_id = str(jobs["run_id"].iloc[0])
    try:
        with BatchProgress(err) as progress:
            progress.update(jobs)
            return pb.poll(jobs, client=client, progress=False, on_update=progress.update)
    except BatchFailedError as exc:
        if exc.jobs is None:
            raise
        # A failed batch is reported with its errors.data; the other batches' results are kept.
        # The Python advice (submit() again) means, in a terminal, running the command again.
        from portfolio_batch._poll import RETRY_ADVICE

        message = str(exc).replace(
            RETRY_ADVICE,
            "Run the same `portfolio-batch analyze-risk` command again to retry: the failed "
            "batch(es) are sent again, the finished ones reused.",
        )
        error_line(message, label="Batch failed:")
        return exc.jobs
    except KeyboardInterrupt:
        # poll() has already said the batches keep running; this adds where the report goes.
        err.print(
            Text.assemble(
                "To finish this run and write its report into --out, run:\n  ",
                (resume_command(run_id, out_dir), "bold"),
            )
        )
        if not has_api_key():
            err.print(
                Text(
                    "Note: the embedded local server stopped with this process. To resume a run after "
                    "a restart, use a server that outlives it (`portfolio-batch serve` with "
                    "OPENAI_BASE_URL and OPENAI_API_KEY set) or a real API key.",
                    style="yellow",
                )
            )
        raise SystemExit(EXIT_INTERRUPTED) from None


def aggregate_run(
    jobs: pd.DataFrame, *, client: Any
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Rebuild the run's requests from its shard files and aggregate: results, requests, costs."""
    import portfolio_batch as pb

    check_shards(jobs)
    paths = [str(p) for p in jobs.sort_values("shard")["path"].tolist()]
    info = load_run_info(Path(paths[0]).parent)
    requests = requests_from_shards(paths, info=info)
    from portfolio_batch._aggregate import _jobs_backend
    from portfolio_batch._backend import provider_of_backend
    from portfolio_batch._cost import pricing_provider

    # priced as the run was: at the rates of where it ran, with its --prices file if it had one
    prices = info.get("prices")
    provider = pricing_provider(provider_of_backend(_jobs_backend(jobs, client, default=False)))
    costs = pb.estimate_cost(requests, prices=prices, provider=provider)
    results = pb.aggregate_df(jobs, requests, client=client, prices=prices)
    return results, requests, costs, info
