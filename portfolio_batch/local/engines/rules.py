"""The ``rules`` engine: instant, deterministic answers computed from the request itself.

For a risk request (the user message's last line is a JSON object of position fields, as
``build_requests`` writes it) it scores the position: risk grows with weight, volatility, beta and
sector. Any other request gets a deterministic reply. ``response_format`` is honoured: a
``json_schema`` answer is valid against the schema.

    >>> risk_answer({"ticker": "NVDA", "sector": "Technology", "weight": 0.12,
    ...              "beta": 1.7, "volatility": 0.5})["risk_level"]
    'high'
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import orjson

from portfolio_batch.local.engines.schema_fill import conform

__all__ = ["RulesEngine", "position_from_messages", "risk_answer"]

# Points added for the sector (cyclical and speculative sectors are riskier than defensives).
SECTOR_POINTS = {
    "technology": 14,
    "information technology": 14,
    "energy": 14,
    "communication services": 10,
    "consumer discretionary": 10,
    "materials": 9,
    "financials": 9,
    "industrials": 7,
    "real estate": 7,
    "health care": 5,
    "healthcare": 5,
    "consumer staples": 2,
    "utilities": 2,
}
DEFAULT_SECTOR_POINTS = 7
POSITION_KEYS = frozenset({"ticker", "weight", "sector", "beta", "volatility"})


def _number(value: Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def risk_answer(position: dict[str, Any]) -> dict[str, Any]:
    """Score one position: ``position_key`` (its first field, the request's key, echoed as
    ``RISK_SCHEMA`` asks), ``risk_score`` 0-100, ``risk_level`` in the system prompt's bands,
    ``drivers`` (≤3), ``rationale``."""
    weight = max(_number(position.get("weight"), 0.0), 0.0)
    volatility = max(_number(position.get("volatility"), 0.25), 0.0)
    beta = _number(position.get("beta"), 1.0)
    sector = str(position.get("sector") or "Unknown")
    parts = {
        f"position weight {weight:.1%} of the portfolio": min(weight * 200.0, 30.0),
        f"annualised volatility {volatility:.0%}": min(volatility * 60.0, 30.0),
        f"beta {beta:.2f}": min(max(beta, 0.0) * 12.0, 20.0),
        f"{sector} sector": float(SECTOR_POINTS.get(sector.lower(), DEFAULT_SECTOR_POINTS)),
    }
    score = int(max(0, min(100, round(5 + sum(parts.values())))))
    # the bands DEFAULT_SYSTEM_PROMPT gives: low below 34, medium 34-66, high above 66
    level = "low" if score < 34 else "medium" if score <= 66 else "high"
    drivers = [name for name, _ in sorted(parts.items(), key=lambda kv: -kv[1])[:3]]
    label = str(position.get("ticker") or position.get("name") or "This position")
    if position.get("name") and position.get("ticker"):
        label = f"{position['ticker']} ({position['name']})"
    rationale = (
        f"{label} scores {score}/100 ({level} risk): weight {weight:.1%}, volatility "
        f"{volatility:.0%}, beta {beta:.2f}, {sector} sector."
    )
    key = next(iter(position.values()), "")  # build_requests writes the key first
    return {
        "position_key": "" if key is None else str(key),
        "risk_score": score,
        "risk_level": level,
        "drivers": drivers,
        "rationale": rationale,
    }


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def position_from_messages(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The position fields from the last line of the last user message, if it holds them."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            text = _text(message.get("content")).rstrip()
            last = text.rsplit("\n", 1)[-1].strip()
            if not last.startswith("{"):
                return None
            try:
                fields = orjson.loads(last)
            except orjson.JSONDecodeError:
                return None
            if isinstance(fields, dict) and POSITION_KEYS & set(fields):
                return fields
            return None
    return None


def _schema_of(response_format: dict[str, Any] | None) -> tuple[str, Any]:
    if not isinstance(response_format, dict):
        return "text", None
    kind = str(response_format.get("type", "text"))
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        return kind, spec.get("schema", {}) if isinstance(spec, dict) else {}
    return kind, response_format.get("schema")


class RulesEngine:
    """Deterministic answers; no model, no randomness."""

    name = "rules"
    context_tokens = 128_000

    def warm(self) -> None:
        return None

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str,
        response_format: dict[str, Any] | None,
        max_tokens: int | None,
    ) -> tuple[str, str]:
        kind, schema = _schema_of(response_format)
        position = position_from_messages(messages)
        last_user = next(
            (_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
        )
        if position is not None:
            hint: Any = risk_answer(position)
        else:
            digest = hashlib.sha256(last_user.encode()).hexdigest()[:8]
            snippet = " ".join(last_user.split())[:80]
            reply = f"Deterministic reply {digest} from the local rules engine to: {snippet}"
            if kind == "text" and schema is None:
                return reply, "stop"
            hint = {"answer": reply} if schema is None else reply
        if schema:
            hint = conform(hint, schema)
        return orjson.dumps(hint).decode(), "stop"
