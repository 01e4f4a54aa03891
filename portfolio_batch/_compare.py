"""What changed between two runs of the same portfolio, position by position.

    >>> import portfolio_batch as pb
    >>> changes = pb.compare(last_week, this_week)          # doctest: +SKIP
    >>> changes[["ticker", "change", "detail"]]              # doctest: +SKIP
      ticker      change                                   detail
    0   NVDA   upgraded  score 58 → 74 (+16); level medium → high
    1   AAPL  reweighted                      weight 6.9% → 2.0%

Positions are matched by the position key (``attrs["key"]``, else ``ticker``). A position is
``new`` or ``dropped``; ``upgraded`` / ``downgraded`` when its risk level went up / down (a higher
level is more risk); ``moved`` when its level is the same but its score moved by more than
``threshold`` points; ``reweighted`` when only its weight moved by more than
``weight_threshold``; ``newly scored`` / ``no longer scored`` when it has a score in one run only
(failed, expired, ...). Unchanged positions are left out.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from portfolio_batch.errors import InputError
from portfolio_batch.review import key_column, level_rank, scored_mask

__all__ = ["CHANGES", "compare"]

# the order changes are listed in, most important first
CHANGES = (
    "new",
    "dropped",
    "upgraded",
    "downgraded",
    "moved",
    "no longer scored",
    "newly scored",
    "reweighted",
)
COLUMNS = (
    "change",
    "detail",
    "previous_score",
    "risk_score",
    "score_change",
    "previous_level",
    "risk_level",
    "previous_weight",
    "weight",
    "weight_change",
    "reweighted",
    "previous_rationale",
    "rationale",
)


def _check(frame: Any, which: str, key: str | None) -> str:
    if not isinstance(frame, pd.DataFrame):
        raise InputError(
            f"compare(): {which} must be a results DataFrame (aggregate_df(), run_sync() or "
            f"pd.read_parquet of results.parquet), got {type(frame).__name__}"
        )
    if "status" not in frame.columns:
        raise InputError(
            f"compare(): the {which} frame has no 'status' column; pass a results frame, not "
            "the portfolio or the requests"
        )
    name = key or key_column(frame)
    if name is None or name not in frame.columns:
        raise InputError(
            f"compare(): the {which} frame has no key column {name!r}; pass key= with the column "
            "that names a position (e.g. key='ticker')"
        )
    dupes = frame[name][frame[name].astype(str).duplicated()]
    if len(dupes):
        shown = ", ".join(map(repr, pd.unique(dupes.astype(str))[:5]))
        raise InputError(
            f"compare(): the {which} frame has {name} values more than once ({shown}); a position "
            "must appear once to be matched with the other run"
        )
    return name


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _side(frame: pd.DataFrame, key: str) -> dict[str, dict[str, Any]]:
    ok = scored_mask(frame) if "risk_score" in frame.columns else frame["status"] == "succeeded"

    def col(name: str) -> list[Any]:
        return frame[name].tolist() if name in frame.columns else [None] * len(frame)

    rows: dict[str, dict[str, Any]] = {}
    for label, good, score, level, weight, rationale in zip(
        frame[key].astype(str),
        ok.tolist(),
        col("risk_score"),
        col("risk_level"),
        col("weight"),
        col("rationale"),
        strict=True,
    ):
        rows[label] = {
            "scored": bool(good),
            "score": _num(score) if good else None,
            "level": level if good else None,
            "weight": _num(weight),
            "rationale": rationale if good else None,
        }
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _score_change(
    p: dict[str, Any], c: dict[str, Any], threshold: float
) -> tuple[list[str], list[str]]:
    """The kinds of change (most important first) and their details, for a position in both
    runs; its weight aside."""
    if not (p["scored"] and c["scored"]):
        if p["scored"]:
            return ["no longer scored"], []
        return (["newly scored"] if c["scored"] else []), []
    kinds: list[str] = []
    details: list[str] = []
    delta = (c["score"] or 0.0) - (p["score"] or 0.0)
    up, down = level_rank(c["level"]), level_rank(p["level"])
    if str(c["level"]) != str(p["level"]):
        # levels off the known scale go by the direction of the score
        higher = up > down if up == up and down == down else delta > 0
        kinds.append("upgraded" if higher else "downgraded")
    elif abs(delta) > threshold:
        kinds.append("moved")
    if kinds or abs(delta) > threshold:
        details.append(f"score {_score(p['score'])} → {_score(c['score'])} ({delta:+g})")
    if str(c["level"]) != str(p["level"]):
        details.append(f"level {p['level']} → {c['level']}")
    return kinds, details


def _change(
    label: str,
    key: str,
    p: dict[str, Any] | None,
    c: dict[str, Any] | None,
    *,
    threshold: float,
    weight_threshold: float,
) -> dict[str, Any] | None:
    """The row of one position's change from ``p`` (previous run) to ``c``; None if unchanged."""
    details: list[str] = []
    if p is None:
        kinds = ["new"]
    elif c is None:
        kinds = ["dropped"]
    else:
        kinds, details = _score_change(p, c, threshold)
    pw = p["weight"] if p else None
    cw = c["weight"] if c else None
    reweighted = pw is not None and cw is not None and abs(cw - pw) > weight_threshold
    if reweighted:
        details.append(f"weight {_pct(pw)} → {_pct(cw)}")
        if not kinds:
            kinds.append("reweighted")
    if not kinds:
        return None
    prev, cur = p or {}, c or {}
    ps, cs = prev.get("score"), cur.get("score")
    return {
        key: label,
        "change": kinds[0],
        "detail": "; ".join(details),
        "previous_score": ps,
        "risk_score": cs,
        "score_change": cs - ps if cs is not None and ps is not None else None,
        "previous_level": prev.get("level"),
        "risk_level": cur.get("level"),
        "previous_weight": pw,
        "weight": cw,
        "weight_change": cw - pw if cw is not None and pw is not None else None,
        "reweighted": bool(reweighted),
        "previous_rationale": prev.get("rationale"),
        "rationale": cur.get("rationale"),
    }


def _ranked(out: pd.DataFrame) -> pd.DataFrame:
    """The changes typed, most important kind first, then the biggest moves."""
    for col in ("previous_score", "risk_score", "score_change", "previous_weight", "weight"):
        out[col] = out[col].astype("float64")
    out["weight_change"] = out["weight_change"].astype("float64")
    out["reweighted"] = out["reweighted"].astype(bool)
    if len(out):
        rank = out["change"].map({c: i for i, c in enumerate(CHANGES)})
        size = -out["score_change"].abs().fillna(0) - out["weight_change"].abs().fillna(0)
        out = (
            out.assign(_r=rank, _s=size)
            .sort_values(["_r", "_s"], kind="stable")
            .drop(columns=["_r", "_s"])
            .reset_index(drop=True)
        )
    return out


def compare(
    previous: pd.DataFrame,
    current: pd.DataFrame,
    *,
    threshold: float = 10.0,
    weight_threshold: float = 0.0025,
    key: str | None = None,
) -> pd.DataFrame:
    """The positions that changed from ``previous`` to ``current`` (two results frames), one row
    each, most important change first.

    ``change`` is one of ``CHANGES`` (see the module docstring); ``detail`` says it in words
    ("score 58 → 74 (+16); level medium → high; weight 6.9% → 2.0%"); the numbers are in
    ``previous_score``/``risk_score``/``score_change``, ``previous_level``/``risk_level``,
    ``previous_weight``/``weight``/``weight_change``; ``reweighted`` is True whenever the weight
    moved by more than ``weight_threshold`` (also beside another change); both rationales are
    kept. ``threshold`` is in score points (0 = any move), ``weight_threshold`` a fraction of the
    portfolio (0.0025 = 0.25 percentage points). ``attrs`` hold the key, the thresholds and the
    runs' ``run_id`` when their frames carry one.

        >>> compare(before, after, threshold=5)["change"].tolist()     # doctest: +SKIP
        ['upgraded', 'reweighted', 'reweighted']
    """
    for name, value in (("threshold", threshold), ("weight_threshold", weight_threshold)):
        if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
            raise InputError(f"compare({name}={value!r}): pass a number of 0 or more")
    prev_key = _check(previous, "previous", key)
    cur_key = _check(current, "current", key or prev_key)
    before, after = _side(previous, prev_key), _side(current, cur_key)
    rows = []
    for label in [*after, *(k for k in before if k not in after)]:
        p, c = before.get(label), after.get(label)
        row = _change(label, cur_key, p, c, threshold=threshold, weight_threshold=weight_threshold)
        if row is not None:
            rows.append(row)
    out = _ranked(pd.DataFrame(rows, columns=[cur_key, *COLUMNS]))
    out.attrs = {
        "key": cur_key,
        "threshold": float(threshold),
        "weight_threshold": float(weight_threshold),
        "previous_run": previous.attrs.get("run_id"),
        "current_run": current.attrs.get("run_id"),
        "previous_positions": len(previous),
        "current_positions": len(current),
    }
    return out
