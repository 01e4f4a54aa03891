"""What a results frame adds up to: successes, failures by status and code, tokens, and estimated
vs actual cost.

    >>> s = summarize(results, costs=costs)  # doctest: +SKIP
    >>> print(s)  # doctest: +SKIP
    38/40 succeeded; actual cost $0.0123 (estimate $0.0130)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from portfolio_batch.aggregate import need_columns

__all__ = ["Summary", "summarize"]


@dataclass
class Summary:
    """What a run gave: ``items`` requested, ``successes``, ``failures`` (counts by status and
    error code), ``errors`` (the rows that did not succeed) and estimated vs actual cost.

    >>> s = summarize(results, costs=costs)  # doctest: +SKIP
    >>> s.successes, s.items, s.actual_cost_usd  # doctest: +SKIP
    (38, 40, 0.0123)
    """

    items: int
    successes: int
    failures: pd.DataFrame
    errors: pd.DataFrame
    by_status: dict[str, int] = field(default_factory=dict)
    actual_cost_usd: float = 0.0
    est_cost_usd: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def to_frame(self) -> pd.DataFrame:
        """The headline numbers as a two-column frame (metric, value)."""
        rows: list[tuple[str, Any]] = [("items", self.items), ("successes", self.successes)]
        rows += [(f"status: {k}", v) for k, v in self.by_status.items() if k != "succeeded"]
        rows += [
            ("prompt_tokens", self.prompt_tokens),
            ("completion_tokens", self.completion_tokens),
            ("actual_cost_usd", self.actual_cost_usd),
            ("est_cost_usd", self.est_cost_usd),
        ]
        return pd.DataFrame(rows, columns=["metric", "value"])

    def __str__(self) -> str:
        est = "n/a" if self.est_cost_usd is None else f"${self.est_cost_usd:.4f}"
        lines = [
            f"{self.successes}/{self.items} succeeded; actual cost ${self.actual_cost_usd:.4f} (estimate {est})",
        ]
        lines += [
            f"  {r.status:<15} {r.error_code if isinstance(r.error_code, str) else '-':<28} {r.count}"
            for r in self.failures.itertuples()
        ]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return (
            "<div><b>portfolio_batch summary</b>"
            + self.to_frame().to_html(index=False)
            + (
                "<p>Failures by status and code</p>" + self.failures.to_html(index=False)
                if len(self.failures)
                else ""
            )
            + "</div>"
        )


def summarize(results: pd.DataFrame, costs: pd.DataFrame | None = None) -> Summary:
    """Successes, failures by status and code, and estimated vs actual cost of a results frame.

    ``costs`` is the ``estimate_cost`` frame; its batch (or, for ``run_sync`` results, sync)
    estimate of the same custom_ids is compared with the actual ``cost_usd``.

    >>> print(summarize(results))  # doctest: +SKIP
    38/40 succeeded; actual cost $0.0123 (estimate n/a)
    """
    need_columns(results, "results", ("status", "error_code"))
    bad = results[results["status"] != "succeeded"]
    failures = (
        bad.groupby([bad["status"], bad["error_code"].astype(object)], dropna=False, sort=False)
        .size()
        .rename("count")
        .reset_index()
        .sort_values(["count", "status"], ascending=[False, True], ignore_index=True)
    )
    failures["error_code"] = (
        failures["error_code"].astype(object).where(failures["error_code"].notna(), None)
    )
    keep = [c for c in results.columns if c not in ("content",) and c in _error_columns(results)]
    est = None
    if costs is not None:
        col = "sync_cost_usd" if results.attrs.get("mode") == "sync" else "batch_cost_usd"
        need_columns(costs, "costs", (col,))
        est = float(costs[col].reindex(results.index).sum())
    by_status = {str(s): int(n) for s, n in results["status"].value_counts().items()}
    return Summary(
        items=len(results),
        successes=by_status.get("succeeded", 0),
        failures=failures,
        errors=bad[keep].copy(),
        by_status=by_status,
        actual_cost_usd=float(np.nansum(results["cost_usd"].to_numpy(dtype=float)))
        if "cost_usd" in results
        else 0.0,
        est_cost_usd=est,
        prompt_tokens=int(results["prompt_tokens"].sum()) if "prompt_tokens" in results else 0,
        completion_tokens=int(results["completion_tokens"].sum())
        if "completion_tokens" in results
        else 0,
    )


def _error_columns(results: pd.DataFrame) -> list[str]:
    first = next((c for c in results.columns if c not in ("custom_id", "status")), None)
    return [
        "custom_id",
        first or "custom_id",
        "status",
        "http_status",
        "error_code",
        "error_message",
        "batch_id",
    ]
