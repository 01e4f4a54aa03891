"""Costs in another currency than USD, at a rate the user gives (never fetched: runs are offline).

    >>> money = fx("EUR", fx_rate=0.92, fx_date="2026-11-13")
    >>> money.format(0.0123)
    '€0.0113'
    >>> money.note
    'EUR at 0.92 per USD (rate of 2026-11-13, given by the user)'

Prices are in USD (genai-prices), so every figure is computed in USD and converted for display:
``estimate_cost(..., currency="EUR", fx_rate=0.92)`` adds ``batch_cost_eur``/``sync_cost_eur``
columns and records the rate in ``attrs``; the report and the CLI print the rate and its date
wherever a converted figure is.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from portfolio_batch.errors import InputError

__all__ = ["USD", "Money", "fx", "money_from_attrs"]

_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}


@dataclass(frozen=True)
class Money:
    """A currency and its rate per USD (``rate`` units of ``currency`` for 1 USD) on ``date``.

    >>> Money().format(0.5)
    '$0.5000'
    """

    currency: str = "USD"
    rate: float = 1.0
    date: str | None = None

    @property
    def converted(self) -> bool:
        """True for any currency but USD: its figures need the rate printed beside them."""
        return self.currency != "USD"

    @property
    def suffix(self) -> str:
        """The column suffix of converted figures: ``eur`` for ``batch_cost_eur``."""
        return self.currency.lower()

    def convert(self, usd: float) -> float:
        return float(usd) * self.rate

    def format(self, usd: Any, *, digits: int | None = None) -> str:
        """``usd`` converted and written with its symbol: 4 decimals under 10 (batch costs are
        fractions of a cent per request), else 2.

        >>> fx("GBP", fx_rate=0.8, fx_date="2026-01-02").format(20)
        '£16.00'
        """
        if usd is None or (isinstance(usd, float) and math.isnan(usd)):
            return "-"
        value = self.convert(float(usd))
        if digits is None:
            digits = 2 if abs(value) >= 10 else 4
        symbol = _SYMBOLS.get(self.currency)
        number = f"{value:,.{digits}f}"
        if symbol is None:
            return f"{self.currency} {number}"
        return f"-{symbol}{number[1:]}" if number.startswith("-") else f"{symbol}{number}"

    @property
    def note(self) -> str | None:
        """The line printed under converted figures; None for USD."""
        if not self.converted:
            return None
        return f"{self.currency} at {self.rate:g} per USD (rate of {self.date}, given by the user)"

    def attrs(self) -> dict[str, Any]:
        return {"currency": self.currency, "fx_rate": self.rate, "fx_date": self.date}


USD = Money()


def fx(
    currency: str | None = "USD",
    *,
    fx_rate: float | None = None,
    fx_date: str | dt.date | None = None,
) -> Money:
    """Check a currency and its rate: ``currency`` a 3-letter code, ``fx_rate`` its units per USD
    (required for any currency but USD), ``fx_date`` the day of the rate (ISO date; default today,
    the day the rate is used).

    >>> fx("usd")
    Money(currency='USD', rate=1.0, date=None)
    >>> fx("EUR")
    Traceback (most recent call last):
    ...
    portfolio_batch.errors.InputError: currency='EUR' needs fx_rate=: how many EUR one USD buys (e.g. fx_rate=0.92), and fx_date= the day of that rate; prices are in USD and no rate is fetched
    """
    code = (currency or "USD").strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", code):
        raise InputError(
            f"currency={currency!r} is not a 3-letter currency code; pass e.g. currency='EUR'"
        )
    if code == "USD":
        if fx_rate is not None and float(fx_rate) != 1.0:
            raise InputError(
                f"fx_rate={fx_rate!r} was given with currency='USD'; prices are in USD already. "
                "Pass the currency to convert to, e.g. currency='EUR', fx_rate=0.92"
            )
        return USD
    if fx_rate is None:
        raise InputError(
            f"currency={code!r} needs fx_rate=: how many {code} one USD buys (e.g. fx_rate=0.92), "
            "and fx_date= the day of that rate; prices are in USD and no rate is fetched"
        )
    try:
        rate = float(fx_rate)
    except (TypeError, ValueError):
        raise InputError(f"fx_rate={fx_rate!r} is not a number; pass e.g. fx_rate=0.92") from None
    if not (math.isfinite(rate) and rate > 0):
        raise InputError(f"fx_rate={fx_rate!r} must be a positive number of {code} per USD")
    return Money(code, rate, _date(fx_date))


def iso_day(value: Any, *, name: str, meaning: str) -> str:
    """``value`` (a date, datetime or ISO string) as ``YYYY-MM-DD``; anything else is an
    ``InputError`` naming the argument ``name`` and what its day means."""
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    try:
        return dt.date.fromisoformat(str(value).strip()).isoformat()
    except ValueError:
        raise InputError(f"{name}={value!r} is not a date; pass {meaning} as YYYY-MM-DD") from None


def _date(value: str | dt.date | None) -> str:
    if value is None:
        return dt.date.today().isoformat()
    return iso_day(value, name="fx_date", meaning="the day of the rate")


def money_from_attrs(attrs: Mapping[Any, Any]) -> Money:
    """The currency a costs frame was estimated in (``estimate_cost(..., currency=)``), else USD."""
    code = attrs.get("currency")
    if not code or str(code).upper() == "USD":
        return USD
    return Money(str(code).upper(), float(attrs["fx_rate"]), attrs.get("fx_date"))
