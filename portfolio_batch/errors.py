"""The exceptions portfolio_batch raises.

Every error a user can act on is a ``PortfolioBatchError``; its message names the row, column,
``custom_id``, file line, flag or batch that was wrong and says what to do about it.

    PortfolioBatchError
    ├── InputError              bad portfolio / request input (also a ValueError)
    ├── PricingError            no price for a model; how to pass one
    ├── BudgetExceededError     an estimate over ``budget_usd``, raised before anything is sent
    ├── BatchFailedError        a batch ended ``failed``; lists ``errors.data`` with line numbers
    ├── DownloadError           a result file could not be downloaded completely after retries
    ├── SubmitError             a file upload or batch creation failed; nothing runs untracked
    ├── PollTimeoutError        ``poll(timeout=)`` ran out; the batches keep running, resumable
    ├── RegistryError           the local job registry cannot be read or written
    ├── LocalServerError        the embedded OpenAI-compatible server could not start
    ├── ExportError             a report could not be exported (the PDF printer failed)
    └── MissingDependencyError  an optional extra is not installed; says which ``pip install``

Warnings (not errors: the run goes on):

    SimulatedBackendWarning     no API key: the answers come from the offline local server
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BatchFailedError",
    "BudgetExceededError",
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
    "SimulatedBackendWarning",
    "SubmitError",
]


class PortfolioBatchError(Exception):
    """Base class of every error raised on purpose by portfolio_batch."""


class InputError(PortfolioBatchError, ValueError):
    """The input (a portfolio file, a DataFrame, a request) is not usable as given."""


class PricingError(PortfolioBatchError, KeyError):
    """No price is known for a model."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class BudgetExceededError(PortfolioBatchError):
    """The cost estimate is over the budget; nothing was uploaded."""

    def __init__(self, message: str, *, estimate_usd: float, budget_usd: float) -> None:
        super().__init__(message)
        self.estimate_usd = estimate_usd
        self.budget_usd = budget_usd


class BatchFailedError(PortfolioBatchError):
    """A batch ended in status ``failed`` (validation or enqueued-token limit)."""

    def __init__(
        self, message: str, *, jobs: Any = None, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.jobs = jobs
        self.errors = errors or []


class DownloadError(PortfolioBatchError):
    """A batch output or error file could not be downloaded completely, even after retries."""


class ResultFileGoneError(DownloadError):
    """A batch's output or error file is no longer on the server (deleted, or past the 30 days
    OpenAI keeps them) and was never downloaded here."""


class SubmitError(PortfolioBatchError):
    """Uploading a shard or creating its batch failed after the SDK's retries."""


class PollTimeoutError(PortfolioBatchError, TimeoutError):
    """``poll`` reached its ``timeout``; the batches keep running on the server."""

    def __init__(self, message: str, *, jobs: Any = None) -> None:
        super().__init__(message)
        self.jobs = jobs


class RegistryError(PortfolioBatchError):
    """The job registry (SQLite under the home directory) failed."""


class LocalServerError(PortfolioBatchError):
    """The embedded local server could not be started or reached."""


class ExportError(PortfolioBatchError):
    """A report could not be written as PDF or Excel; the message says what the tool reported."""


class MissingDependencyError(PortfolioBatchError, ImportError):
    """An optional extra is needed for this feature."""


class SimulatedBackendWarning(UserWarning):
    """No API key is set, so ``client()`` picked the embedded local server: the answers are
    simulated by its offline engine, not an LLM's judgement. Issued once per process and engine.

    Silence it (once you know) with
    ``warnings.filterwarnings("ignore", category=pb.SimulatedBackendWarning)``.
    """


def missing_extra(module: str, extra: str, *, alternative: str = "") -> MissingDependencyError:
    """The error for an optional import that failed, with the install command to fix it (and
    ``alternative``, another way out, when there is one). Every extra's import raises through it.

        >>> print(missing_extra("matplotlib", "report"))
        'matplotlib' is not installed; it comes with the 'report' extra. Install it with: pip install 'portfolio_batch[report]'
    """
    fix = f"pip install 'portfolio_batch[{extra}]'"
    return MissingDependencyError(
        f"{module!r} is not installed; it comes with the {extra!r} extra. "
        + (
            f"{alternative}, or install it with: {fix}"
            if alternative
            else f"Install it with: {fix}"
        ),
        name=module,
    )
