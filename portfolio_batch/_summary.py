"""What a results frame adds up to: successes, failures by status and code, tokens, and estimated
vs actual cost.

    >>> s = summarize(results, costs=costs)  # doctest: +SKIP
    >>> print(s)  # doctest: +SKIP
    38/40 succeeded; actual cost $0.0123 (estimate $0.0130)
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from portfolio_batch._aggregate import need_columns
from portfolio_batch._backend import provider_of_backend
from portfolio_batch._quality import check_answers

__all__ = ["Summary", "summarize"]


@dataclass
class Summary:
    """What a run gave: ``items`` requested, ``successes``, ``failures`` (counts by status and
    error code), ``errors`` (the rows that did not succeed), estimated vs actual cost, and the
    answer checks: ``flags`` (``check_answers``' frame) and ``trusted`` (successes no flag points
    at).

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
    reasoning_tokens: int = 0  # part of completion_tokens (billed as output, counted once)
    flags: pd.DataFrame | None = None
    trusted: int | None = None
    simulated: bool = False  # the answers came from the offline local server (attrs["simulated"])
    engine: str | None = None
    mode: str = "batch"
    provider: str | None = None  # anthropic, gemini, ...; None for OpenAI and its local server

    @property
    def banner(self) -> str | None:
        """The line a simulated run's summary starts with ("Simulated: answers from the offline
        local rules engine, ..."); None for answers from a real API."""
        from portfolio_batch._backend import simulated_banner

        if not self.simulated:
            return None
        return simulated_banner(self.engine, mode=self.mode, provider=self.provider)

    @property
    def cost_label(self) -> str:
        """What ``actual_cost_usd`` is: paid, or for a simulated run the provider's price of it."""
        prices = "synchronous" if self.mode == "sync" else "batch"
        if not self.simulated:
            return "actual cost"
        from portfolio_batch._backend import provider_shown

        return f"cost at {provider_shown(self.provider)[0]} {prices} prices"

    @property
    def headline(self) -> str | None:
        """The line "The answers look degenerate: ..." when a flag is severe, else None."""
        from portfolio_batch._quality import headline

        return headline(self.flags)

    @property
    def _cost_metric(self) -> str:
        if not self.simulated:
            return "actual_cost_usd"
        # not "actual": nothing was paid; and at whose prices (a Claude run is not priced at OpenAI's)
        prices = "sync" if self.mode == "sync" else "batch"
        return f"cost_usd_at_{self.provider or 'openai'}_{prices}_prices"

    def to_frame(self) -> pd.DataFrame:
        """The headline numbers as a two-column frame (metric, value)."""
        rows: list[tuple[str, Any]] = [("items", self.items), ("successes", self.successes)]
        if self.trusted is not None:
            rows.append(("trusted answers", self.trusted))
        rows += [(f"status: {k}", v) for k, v in self.by_status.items() if k != "succeeded"]
        rows += [
            ("prompt_tokens", self.prompt_tokens),
            ("completion_tokens", self.completion_tokens),
            *([("reasoning_tokens", self.reasoning_tokens)] if self.reasoning_tokens else []),
            (self._cost_metric, self.actual_cost_usd),
            ("est_cost_usd", self.est_cost_usd),
        ]
        if self.simulated:
            rows.insert(0, ("simulated", f"yes: answers from the local {self.engine} engine"))
        return pd.DataFrame(rows, columns=["metric", "value"])

    def __str__(self) -> str:
        est = "n/a" if self.est_cost_usd is None else f"${self.est_cost_usd:.4f}"
        lines = [
            *([self.banner] if self.banner else []),
            f"{self.successes}/{self.items} succeeded; {self.cost_label} ${self.actual_cost_usd:.4f} (estimate {est})",
        ]
        lines += [
            f"  {r.status:<15} {r.error_code if isinstance(r.error_code, str) else '-':<28} {r.count}"
            for r in self.failures.itertuples()
        ]
        if self.headline:
            lines.append(self.headline)
        for r in self.flags.itertuples() if self.flags is not None else ():
            lines.append(f"  {r.severity:<8} {r.check:<15} {r.message}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return (
            "<div><b>portfolio_batch summary</b>"
            + (
                f"<p style='background:#fff3e0;border-left:4px solid #ef6c00;padding:4px 8px'>"
                f"<b>{html.escape(self.banner)}</b></p>"
                if self.banner
                else ""
            )
            + self.to_frame().to_html(index=False)
            + (
                "<p>Failures by status and code</p>" + self.failures.to_html(index=False)
                if len(self.failures)
                else ""
            )
            + (
                f"<p style='color:#c62828'><b>{html.escape(self.headline)}</b></p>"
                if self.headline
                else ""
            )
            + (
                "<p>Answer checks</p>"
                + self.flags[["check", "field", "severity", "count", "message", "advice"]].to_html(
                    index=False
                )
                if self.flags is not None and len(self.flags)
                else ""
            )
            + "</div>"
        )


def summarize(
    results: pd.DataFrame,
    *,
    costs: pd.DataFrame | None = None,
    requests: pd.DataFrame | None = None,
) -> Summary:
    """Successes, failures by status and code, estimated vs actual cost and the answer checks of
    a results frame.

    ``costs`` is the ``estimate_cost`` frame; its batch (or, for ``run_sync`` results, sync)
    estimate of the same custom_ids is compared with the actual ``cost_usd``. ``check_answers``
    runs on the results (``requests`` gives it the schema and prompt when the results' attrs were
    lost, e.g. read back from a file): ``.flags``, ``.trusted``, ``.headline``.

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
    flags = check_answers(results, requests=requests)
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
        reasoning_tokens=int(results["reasoning_tokens"].sum())
        if "reasoning_tokens" in results
        else 0,
        flags=flags,
        trusted=int(flags.attrs["trusted"]),
        simulated=bool(results.attrs.get("simulated")),
        engine=results.attrs.get("engine"),
        mode=str(results.attrs.get("mode") or "batch"),
        provider=provider_of_backend(results.attrs.get("backend")),
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
