"""portfolio_batch: an LLM risk review of every portfolio position through the OpenAI Batch API.

    >>> import portfolio_batch as pb
    >>> portfolio = pb.load_portfolio("testdata/portfolio.csv")     # doctest: +SKIP
    >>> requests = pb.build_requests(portfolio)                     # doctest: +SKIP
    >>> costs = pb.estimate_cost(requests)                          # doctest: +SKIP
    >>> manifest = pb.to_jsonl(requests, "out/", costs=costs)       # doctest: +SKIP
    >>> jobs = pb.poll(pb.submit(manifest, budget_usd=1.0))         # doctest: +SKIP
    >>> results = pb.aggregate_df(jobs, requests)                   # doctest: +SKIP

The public names are imported lazily (PEP 562) so ``import portfolio_batch`` stays fast for the CLI
and the local server, which need only a few of them.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from portfolio_batch._version import __version__
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

# public name -> module that defines it
_LAZY = {
    "load_portfolio": "portfolio_batch.portfolio",
    "build_requests": "portfolio_batch.requests",
    "RISK_SCHEMA": "portfolio_batch.requests",
    "MODEL_FAMILIES": "portfolio_batch.requests",
    "to_jsonl": "portfolio_batch.jsonl",
    "estimate_cost": "portfolio_batch.cost",
    "compare_models": "portfolio_batch.cost",
    "check_budget": "portfolio_batch.cost",
    "client": "portfolio_batch.backend",
    "submit": "portfolio_batch.submit",
    "resume": "portfolio_batch.submit",
    "cancel": "portfolio_batch.submit",
    "poll": "portfolio_batch.poll",
    "jobs": "portfolio_batch.registry",
    "aggregate_df": "portfolio_batch.aggregate",
    "summarize": "portfolio_batch.summary",
    "check_answers": "portfolio_batch.quality",
    "retry_failed": "portfolio_batch.retry",
    "merge_results": "portfolio_batch.retry",
    "run_sync": "portfolio_batch.sync",
    "start": "portfolio_batch.run",
    "attach": "portfolio_batch.run",
    "runs": "portfolio_batch.run",
    "Run": "portfolio_batch.run",
    "CanaryHeldError": "portfolio_batch.run",
    "dashboard": "portfolio_batch.dashboard",
    "report": "portfolio_batch.report",
    "compare": "portfolio_batch.compare",
}

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

if TYPE_CHECKING:
    from portfolio_batch.aggregate import aggregate_df
    from portfolio_batch.backend import client
    from portfolio_batch.compare import compare
    from portfolio_batch.cost import check_budget, compare_models, estimate_cost
    from portfolio_batch.dashboard import dashboard
    from portfolio_batch.jsonl import to_jsonl
    from portfolio_batch.poll import poll
    from portfolio_batch.portfolio import load_portfolio
    from portfolio_batch.quality import check_answers
    from portfolio_batch.registry import jobs
    from portfolio_batch.report import report
    from portfolio_batch.requests import MODEL_FAMILIES, RISK_SCHEMA, build_requests
    from portfolio_batch.retry import merge_results, retry_failed
    from portfolio_batch.run import CanaryHeldError, Run, attach, runs, start
    from portfolio_batch.submit import cancel, resume, submit
    from portfolio_batch.summary import summarize
    from portfolio_batch.sync import run_sync


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'portfolio_batch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps ``pb.submit``, ``pb.poll`` and ``pb.report`` the functions: the import system binds a
    submodule to its package's attribute of the same name (``portfolio_batch.submit`` the module)
    once it is imported from anywhere, which would hide the function of that name."""

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            isinstance(value, types.ModuleType)
            and _LAZY.get(name) == value.__name__
            and hasattr(value, name)
        ):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
