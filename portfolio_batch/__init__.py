"""portfolio_batch: an LLM risk review of every portfolio position through the OpenAI Batch API.

    >>> import portfolio_batch as pb
    >>> portfolio = pb.load_portfolio("testdata/portfolio.csv")     # doctest: +SKIP
    >>> requests = pb.build_requests(portfolio)                     # doctest: +SKIP
    >>> costs = pb.estimate_cost(requests)                          # doctest: +SKIP
    >>> manifest = pb.to_jsonl(requests, "out/", costs=costs)       # doctest: +SKIP
    >>> jobs = pb.poll(pb.submit(manifest, budget_usd=1.0))         # doctest: +SKIP
    >>> results = pb.aggregate_df(jobs, requests)                   # doctest: +SKIP

The implementation lives in private modules, one per stage (``_requests``, ``_jsonl``, ``_cost``,
``_submit``, ``_poll``, ``_aggregate``; docs/design.md draws them); this namespace is the API.
``charts``, ``review`` (the same figures as tables), ``errors``, ``local`` and ``testing`` are
public modules, reachable as ``pb.charts`` or ``pb.local``; they load on first use, since some
need extras (matplotlib; FastAPI and uvicorn).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from portfolio_batch import _poll, _widgets
from portfolio_batch._aggregate import aggregate_df
from portfolio_batch._backend import client
from portfolio_batch._compare import compare
from portfolio_batch._cost import check_budget, compare_models, estimate_cost
from portfolio_batch._dashboard import dashboard
from portfolio_batch._jsonl import iter_jsonl, to_jsonl
from portfolio_batch._poll import poll
from portfolio_batch._portfolio import load_portfolio
from portfolio_batch._quality import check_answers
from portfolio_batch._report import report
from portfolio_batch._requests import MODEL_FAMILIES, RISK_SCHEMA, build_requests
from portfolio_batch._retry import merge_results, retry_failed
from portfolio_batch._run import CanaryHeldError, Run, attach, runs, start
from portfolio_batch._submit import cancel, resume, submit
from portfolio_batch._summary import summarize
from portfolio_batch._sync import run_sync
from portfolio_batch._version import __version__
from portfolio_batch._widgets import jobs
from portfolio_batch.errors import (
    BatchFailedError,
    BudgetExceededError,
    DownloadError,
    ExportError,
    InputError,
    LocalServerError,
    MissingDependencyError,
    PollTimeoutError,
    PortfolioBatchError,
    PricingError,
    RegistryError,
    ResultFileGoneError,
    SimulatedBackendWarning,
    SubmitError,
)

__all__ = [
    "MODEL_FAMILIES",
    "RISK_SCHEMA",
    "BatchFailedError",
    "BudgetExceededError",
    "CanaryHeldError",
    "DownloadError",
    "ExportError",
    "InputError",
    "LocalServerError",
    "MissingDependencyError",
    "PollTimeoutError",
    "PortfolioBatchError",
    "PricingError",
    "RegistryError",
    "ResultFileGoneError",
    "Run",
    "SimulatedBackendWarning",
    "SubmitError",
    "__version__",
    "aggregate_df",
    "attach",
    "build_requests",
    "cancel",
    "check_answers",
    "check_budget",
    "client",
    "compare",
    "compare_models",
    "dashboard",
    "estimate_cost",
    "iter_jsonl",
    "jobs",
    "load_portfolio",
    "merge_results",
    "poll",
    "report",
    "resume",
    "retry_failed",
    "run_sync",
    "runs",
    "start",
    "submit",
    "summarize",
    "to_jsonl",
]

# The composition root: the pipeline never imports a display module, so poll's default display
# (the notebook panel in a kernel, else a text bar) is handed to it here.
_poll.set_default_progress(_widgets.progress_display)

# Public subpackages. Not in __all__: a star import would load matplotlib and FastAPI.
_SUBPACKAGES = frozenset({"charts", "errors", "local", "review", "testing"})


def __getattr__(name: str) -> ModuleType:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # The API and nothing else: not the private modules, not what this file imports.
    return sorted(__all__)
