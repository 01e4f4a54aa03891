"""The tables of a risk review, each a function a notebook can call on its own; ``pb.report``
puts them together (with the charts of ``portfolio_batch.charts``) in one HTML file.

    >>> from portfolio_batch import review
    >>> review.contributions(results).head(3)       # doctest: +SKIP
      ticker  weight  risk_score risk_level  contribution  share  cum_share
    0   NVDA   0.060          74       high          4.44  0.094      0.094

Weights are **gross**: a short (negative weight) is exposure of its absolute size, so the
weighted score, the share of the portfolio per risk level, contributions and concentration (HHI)
use ``|weight|``; ``net_weight`` columns keep the sign. A contribution is ``|weight| × score`` and
its ``share`` is of the sum over the scored positions. Positions without a score (failed,
expired, missing, invalid output) are counted, never dropped: they have their own "no score" row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np
import pandas as pd

from portfolio_batch.errors import InputError

__all__ = [
    "LEVEL_ORDER",
    "changes_line",
    "concentration",
    "contributions",
    "coverage",
    "coverage_line",
    "frame_sha256",
    "key_column",
    "level_for",
    "level_shares",
    "positions",
    "quant_proxy",
    "sectors",
    "summary_line",
    "weighted_score",
]

# Levels from least to most risk; a level not listed sorts after these.
LEVEL_ORDER = ("low", "moderate", "medium", "elevated", "high", "very high", "critical")
NO_SCORE = "no score"
_HINT = "Pass the frame returned by aggregate_df() or run_sync()."


# -- helpers ----------------------------------------------------------------------------------


def _need(results: Any, columns: Iterable[str], fn: str) -> pd.DataFrame:
    if not isinstance(results, pd.DataFrame):
        raise InputError(
            f"{fn}() needs the results DataFrame, got {type(results).__name__}. {_HINT}"
        )
    missing = [c for c in columns if c not in results.columns]
    if missing:
        raise InputError(
            f"{fn}(): the results frame has no column(s) {', '.join(map(repr, missing))}. {_HINT}"
        )
    return results


def _float(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").astype("float64")


def scored_mask(results: pd.DataFrame) -> pd.Series:
    """Rows with a usable score: status ``succeeded`` and a numeric ``risk_score``."""
    ok = results["status"].astype("string").fillna("missing") == "succeeded"
    return ok & _float(results["risk_score"]).notna()


def gross(results: pd.DataFrame) -> pd.Series:
    """``|weight|``, 0 where missing."""
    return _float(results["weight"]).fillna(0.0).abs()


def key_column(results: pd.DataFrame) -> str | None:
    """The position key: ``attrs["key"]`` (set by ``build_requests``), else ``ticker``, else the
    first data column (the contract puts the key right after ``custom_id``)."""
    key = results.attrs.get("key")
    if key in results.columns:
        return str(key)
    if "ticker" in results.columns:
        return "ticker"
    data = [c for c in results.columns if c != "custom_id"]
    if data and data[0] not in ("status", "weight", "risk_score", "risk_level"):
        return str(data[0])
    return None


def _labels(results: pd.DataFrame) -> pd.Series:
    key = key_column(results)
    if key is not None:
        return results[key].astype(str)
    if "custom_id" in results.columns:
        return results["custom_id"].astype(str)
    return pd.Series(results.index.astype(str), index=results.index)


def level_rank(level: Any) -> float:
    """Where a level sits on the risk scale (low 0 … critical 6); NaN for an unknown one."""
    text = str(level).strip().lower() if isinstance(level, str) else ""
    return float(LEVEL_ORDER.index(text)) if text in LEVEL_ORDER else float("nan")


def _sorted_levels(levels: Iterable[str]) -> list[str]:
    return sorted(
        set(levels), key=lambda v: (level_rank(v) if level_rank(v) == level_rank(v) else 99, v)
    )


def level_bands(results: pd.DataFrame) -> list[tuple[str, float, float]]:
    """(level, from, to) of each risk level: read from the run's system prompt ("low below 34,
    medium 34-66, high above 66"), else the default prompt's bands."""
    from portfolio_batch._quality import score_bands
    from portfolio_batch._requests import DEFAULT_SYSTEM_PROMPT

    texts = [str(results.attrs.get("system_prompt") or DEFAULT_SYSTEM_PROMPT)]
    bands = score_bands(["low", "medium", "high"], texts, 0.0, 100.0) or score_bands(
        ["low", "medium", "high"], [DEFAULT_SYSTEM_PROMPT], 0.0, 100.0
    )
    assert bands is not None  # the default prompt has its bands, and an even split exists
    return sorted(((k, lo, hi) for k, (lo, hi) in bands.items()), key=lambda b: b[1])


def level_for(score: float | None, *, results: pd.DataFrame | None = None) -> str | None:
    """The level a score falls in by the run's bands (see ``level_bands``); None for no score.

    >>> level_for(70.0)
    'high'
    """
    if score is None or score != score:
        return None
    bands = level_bands(results if results is not None else pd.DataFrame())
    for name, _lo, hi in bands:
        if score < hi:
            return name
    return bands[-1][0]


# -- figures ----------------------------------------------------------------------------------


def weighted_score(results: pd.DataFrame) -> float | None:
    """The portfolio's score: ``Σ |w|·score / Σ |w|`` over the scored positions; None if none.

    >>> weighted_score(results)          # doctest: +SKIP
    48.7
    """
    _need(results, ["status", "risk_score", "weight"], "weighted_score")
    ok = scored_mask(results)
    w = gross(results)[ok]
    if not ok.any() or w.sum() <= 0:
        return None
    return float((w * _float(results["risk_score"])[ok]).sum() / w.sum())


def level_shares(results: pd.DataFrame) -> pd.DataFrame:
    """The share of the portfolio (by gross weight) in each risk level, lowest level first, and a
    "no score" row for positions without one.

    Columns: ``risk_level``, ``positions``, ``gross_weight``, ``share`` (of the whole portfolio's
    gross weight, so the shares add up to 1).

        >>> level_shares(results)        # doctest: +SKIP
          risk_level  positions  gross_weight  share
        0        low         12        0.2970  0.297
    """
    _need(results, ["status", "risk_score", "risk_level", "weight"], "level_shares")
    ok = scored_mask(results)
    level = results["risk_level"].astype("string").str.strip().str.lower()
    level = level.where(ok & level.notna(), NO_SCORE).astype(str)
    w = gross(results)
    total = float(w.sum())
    frame = pd.DataFrame({"risk_level": level, "w": w})
    g = frame.groupby("risk_level", sort=False).agg(
        positions=("w", "size"), gross_weight=("w", "sum")
    )
    order = [*_sorted_levels(v for v in g.index if v != NO_SCORE)]
    if NO_SCORE in g.index:
        order.append(NO_SCORE)
    g = g.loc[order].reset_index()
    g["positions"] = g["positions"].astype("int64")
    g["share"] = g["gross_weight"] / total if total > 0 else 0.0
    return g


def contributions(results: pd.DataFrame, *, top: int | None = 10) -> pd.DataFrame:
    """The positions' risk contributions ``|weight| × risk_score``, largest first.

    ``share`` is a contribution's part of the total over the scored positions, ``cum_share`` the
    running total; ``top=None`` keeps every scored position. ``attrs["total"]`` is the sum.

        >>> contributions(results, top=3)["ticker"].tolist()    # doctest: +SKIP
        ['NVDA', 'AAPL', 'MSFT']
    """
    _need(results, ["status", "risk_score", "weight"], "contributions")
    if top is not None and (not isinstance(top, int) or top < 1):
        raise InputError(f"contributions(top={top!r}): pass a positive number of rows or None")
    ok = scored_mask(results)
    key = key_column(results)
    cols = [c for c in dict.fromkeys([key, "name", "sector"]) if c and c in results.columns]
    frame = results.loc[ok, cols].copy()
    frame["weight"] = _float(results.loc[ok, "weight"])
    frame["risk_score"] = _float(results.loc[ok, "risk_score"])
    if "risk_level" in results.columns:
        frame["risk_level"] = results.loc[ok, "risk_level"].astype(object)
    frame["contribution"] = frame["weight"].abs() * frame["risk_score"]
    total = float(frame["contribution"].sum())
    frame = frame.sort_values("contribution", ascending=False, kind="stable")
    frame["share"] = frame["contribution"] / total if total > 0 else 0.0
    frame["cum_share"] = frame["share"].cumsum()
    out = (frame if top is None else frame.head(top)).reset_index(drop=True)
    out.attrs = {"total": total, "scored": int(ok.sum())}
    return out


def sectors(results: pd.DataFrame) -> pd.DataFrame:
    """One row per sector: ``positions``, ``gross_weight``, ``net_weight``, ``weighted_score``
    (by gross weight, scored positions only), ``max_score`` and the position that has it,
    ``level`` (the level of the weighted score by the run's bands), ``contribution_share`` (of the
    portfolio's total contribution); sorted by contribution share, largest first.

        >>> sectors(results)[["sector", "weighted_score", "max_score"]].head(2)  # doctest: +SKIP
    """
    _need(results, ["status", "risk_score", "weight", "sector"], "sectors")
    ok = scored_mask(results)
    score = _float(results["risk_score"])
    w = gross(results)
    frame = pd.DataFrame(
        {
            "sector": results["sector"].astype("string").fillna("(no sector)").astype(str),
            "w": w,
            "net": _float(results["weight"]).fillna(0.0),
            "w_ok": w.where(ok, 0.0),
            "ws": (w * score).where(ok, 0.0),
            "score": score.where(ok),
            "label": _labels(results),
            "bad": (~ok).astype("int64"),
        }
    )
    rows = []
    total = float(frame["ws"].sum())
    for sector, part in frame.groupby("sector", sort=False):
        has = part["score"].notna()
        top: Any = part.loc[cast(Any, part["score"].idxmax())] if has.any() else None
        wscore = float(part["ws"].sum() / part["w_ok"].sum()) if part["w_ok"].sum() > 0 else None
        rows.append(
            {
                "sector": sector,
                "positions": len(part),
                "unscored": int(part["bad"].sum()),
                "gross_weight": float(part["w"].sum()),
                "net_weight": float(part["net"].sum()),
                "weighted_score": wscore,
                "max_score": float(top["score"]) if top is not None else None,
                "max_position": str(top["label"]) if top is not None else None,
                "level": level_for(wscore, results=results),
                "contribution_share": float(part["ws"].sum()) / total if total > 0 else 0.0,
            }
        )
    out = pd.DataFrame(rows)
    if not len(out):
        return out
    out = out.sort_values(
        ["contribution_share", "gross_weight"], ascending=False, kind="stable"
    ).reset_index(drop=True)
    for col in ("weighted_score", "max_score"):
        out[col] = out[col].astype("float64")
    return out


def concentration(results: pd.DataFrame, *, top_n: int = 10) -> pd.DataFrame:
    """How concentrated the portfolio is, by gross weight, against its scores.

    Rows (``metric``, ``value``): ``positions``; ``hhi`` (Herfindahl–Hirschman index of the gross
    weights normalised to 1: Σ share², 1/N for equal weights, 1 for one position);
    ``effective_positions`` (1 / HHI); ``top_n_weight`` (gross weight share of the ``top_n``
    largest); ``largest`` (the largest position and its share); ``top_n_score`` and
    ``rest_score`` (the weighted scores of the ``top_n`` largest and of the others).

        >>> concentration(results).set_index("metric")["value"]["hhi"]     # doctest: +SKIP
        0.0346
    """
    _need(results, ["status", "risk_score", "weight"], "concentration")
    if not isinstance(top_n, int) or top_n < 1:
        raise InputError(f"concentration(top_n={top_n!r}): pass a positive number of positions")
    w = gross(results)
    total = float(w.sum())
    share = w / total if total > 0 else w * 0.0
    order = share.sort_values(ascending=False, kind="stable").index
    largest = order[: min(top_n, len(order))]
    rest = order[len(largest) :]
    hhi = float((share**2).sum())
    labels = _labels(results)

    def wscore(index: pd.Index) -> float | None:
        part = results.loc[index]
        return weighted_score(part) if len(part) else None

    rows: list[tuple[str, Any, str]] = [
        ("positions", len(results), "positions in the portfolio"),
        ("hhi", hhi, "Herfindahl index of gross weights (1/N when equal)"),
        ("effective_positions", 1 / hhi if hhi > 0 else None, "1 / HHI"),
        (
            "top_n_weight",
            float(share.loc[largest].sum()),
            f"gross weight share of the {len(largest)} largest positions",
        ),
        (
            "largest",
            f"{labels.loc[order[0]]} {float(share.loc[order[0]]):.1%}" if len(order) else None,
            "the largest position and its gross weight share",
        ),
        ("top_n_score", wscore(largest), f"weighted score of the {len(largest)} largest"),
        ("rest_score", wscore(rest), "weighted score of the other positions"),
    ]
    out = pd.DataFrame(rows, columns=["metric", "value", "note"])
    out.attrs = {"top_n": len(largest), "hhi": hhi}
    return out


def quant_proxy(
    results: pd.DataFrame, *, columns: Sequence[str] = ("volatility", "beta")
) -> pd.DataFrame:
    """The model's score against a quantitative proxy built from the inputs, largest
    disagreement first.

    ``proxy`` is the mean percentile rank (0 = lowest in this portfolio, 100 = highest) of the
    given input ``columns`` that exist (default volatility and beta); ``expected`` the score a
    straight line through (proxy, score) gives; ``disagreement = risk_score - expected`` in score
    points (positive: the model sees more risk than the numbers suggest). ``attrs["spearman"]``
    is the rank correlation of score and proxy, ``attrs["fit"]`` the line's (slope, intercept),
    ``attrs["columns"]`` the columns used. Scored positions only.

        >>> quant_proxy(results).head(3)          # doctest: +SKIP
    """
    _need(results, ["status", "risk_score"], "quant_proxy")
    used = [c for c in columns if c in results.columns]
    if not used:
        raise InputError(
            f"quant_proxy(): the results frame has none of the input columns {list(columns)!r} "
            "to build a proxy from; pass columns= with numeric inputs of the portfolio "
            "(e.g. columns=['volatility'])"
        )
    ok = scored_mask(results)
    inputs = pd.DataFrame({c: _float(results[c]) for c in used})[ok]
    have = inputs.notna().any(axis=1)
    idx = inputs.index[have]
    key = key_column(results)
    frame = results.loc[idx, [c for c in [key] if c]].copy() if key else pd.DataFrame(index=idx)
    frame["risk_score"] = _float(results.loc[idx, "risk_score"])
    if "risk_level" in results.columns:
        frame["risk_level"] = results.loc[idx, "risk_level"].astype(object)
    for c in used:
        frame[c] = inputs.loc[idx, c]

    def pct(values: pd.Series) -> pd.Series:
        n = int(values.notna().sum())
        ranks = values.rank(method="average")
        return (ranks - 1) / (n - 1) * 100 if n > 1 else ranks * 0 + 50.0

    frame["proxy"] = pd.concat([pct(inputs.loc[idx, c]) for c in used], axis=1).mean(axis=1)
    x, y = frame["proxy"].to_numpy(dtype=float), frame["risk_score"].to_numpy(dtype=float)
    if len(frame) > 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
    else:
        slope, intercept = 0.0, float(y.mean()) if len(y) else 0.0
    frame["expected"] = intercept + slope * frame["proxy"]
    frame["disagreement"] = frame["risk_score"] - frame["expected"]
    rho = (
        float(frame["risk_score"].rank().corr(frame["proxy"].rank()))
        if len(frame) > 2
        else float("nan")
    )
    frame = frame.reindex(
        frame["disagreement"].abs().sort_values(ascending=False, kind="stable").index
    ).reset_index(drop=True)
    frame.attrs = {"columns": used, "spearman": rho, "fit": (float(slope), float(intercept))}
    return frame


def coverage(results: pd.DataFrame, *, flags: pd.DataFrame | None = None) -> pd.DataFrame:
    """How much of the portfolio the review covers: one row per outcome, with ``positions``,
    ``gross_weight_share`` and ``reasons``.

    Outcomes: ``reviewed`` (succeeded; ``not trusted`` counts those ``check_answers`` flags, its
    reasons the flags' messages), then each other status (``failed``, ``expired``, ...) with its
    error codes as reasons.

        >>> coverage(results)[["outcome", "positions"]].values.tolist()   # doctest: +SKIP
        [['reviewed', 37], ['not trusted', 0], ['failed', 1], ['missing', 1]]
    """
    from portfolio_batch._quality import check_answers

    _need(results, ["status"], "coverage")
    if flags is None:
        flags = check_answers(results)
    status = results["status"].astype("string").fillna("missing").astype(str)
    w = gross(results) if "weight" in results.columns else pd.Series(0.0, index=results.index)
    total = float(w.sum())
    ok = status == "succeeded"
    trusted = int(flags.attrs.get("trusted", int(ok.sum())))
    untrusted = int(ok.sum()) - trusted
    reasons = (
        "; ".join(f"{r.severity}: {r.message}" for r in flags.itertuples()) if len(flags) else ""
    )
    rows: list[dict[str, Any]] = [
        {
            "outcome": "reviewed",
            "positions": int(ok.sum()),
            "gross_weight_share": float(w[ok].sum()) / total if total > 0 else None,
            "reasons": "",
        },
        {
            "outcome": "not trusted",
            "positions": untrusted,
            "gross_weight_share": None,
            "reasons": reasons if untrusted else "",
        },
    ]
    codes = results["error_code"] if "error_code" in results.columns else None
    for name in pd.unique(status[~ok]):
        mask = status == name
        why = ""
        if codes is not None:
            counts = codes[mask].astype("string").fillna("no error code").value_counts()
            why = ", ".join(f"{c} ×{n}" if n > 1 else str(c) for c, n in counts.items())
        rows.append(
            {
                "outcome": str(name),
                "positions": int(mask.sum()),
                "gross_weight_share": float(w[mask].sum()) / total if total > 0 else None,
                "reasons": why,
            }
        )
    out = pd.DataFrame(rows)
    out.attrs = {"positions": len(results), "flags": len(flags)}
    return out


def coverage_line(results: pd.DataFrame, *, flags: pd.DataFrame | None = None) -> str:
    """Coverage in one sentence: "38 of 40 positions reviewed (96.1% of gross weight); 1 failed
    (server_error); 1 missing; 0 not trusted by the answer checks"."""
    table = coverage(results, flags=flags)
    reviewed = table.iloc[0]
    share = reviewed["gross_weight_share"]
    parts = [
        f"{reviewed['positions']} of {len(results)} positions reviewed"
        + (f" ({share:.1%} of gross weight)" if share is not None and share == share else "")
    ]
    for rec in table.iloc[2:].to_dict("records"):
        why = rec["reasons"]
        parts.append(f"{rec['positions']} {rec['outcome']}" + (f" ({why})" if why else ""))
    untrusted = int(table.iloc[1]["positions"])
    parts.append(f"{untrusted} not trusted by the answer checks")
    return "; ".join(parts)


def positions(
    results: pd.DataFrame, *, previous: pd.DataFrame | None = None, threshold: float = 10.0
) -> pd.DataFrame:
    """Every position, highest score first (unscored last), with its contribution and, given the
    ``previous`` run's results, ``Δ score``, ``Δ weight``, ``previous_level`` and ``change`` (as
    ``pb.compare`` names it; empty when nothing changed).

        >>> positions(results, previous=last_results).head()   # doctest: +SKIP
    """
    _need(results, ["status"], "positions")
    key = key_column(results)
    cols = [
        c
        for c in dict.fromkeys([key, "name", "sector", "weight", "risk_score", "risk_level"])
        if c and c in results.columns
    ]
    frame = results[cols].copy()
    if {"risk_score", "weight"} <= set(results.columns):
        ok = scored_mask(results)
        frame["risk_score"] = _float(results["risk_score"]).where(ok)
        frame["contribution"] = (gross(results) * frame["risk_score"]).where(ok)
    if previous is not None and key is not None:
        from portfolio_batch._compare import compare

        changes = compare(previous, results, threshold=threshold, key=key)
        prev = previous.set_index(previous[key].astype(str))
        keys = frame[key].astype(str)
        if "risk_score" in previous.columns and "risk_score" in frame.columns:
            prev_score = _float(prev["risk_score"]).where(scored_mask(prev))
            frame["Δ score"] = frame["risk_score"] - keys.map(prev_score).astype("float64").values
        if "weight" in previous.columns and "weight" in frame.columns:
            prev_w = _float(prev["weight"])
            frame["Δ weight"] = _float(frame["weight"]) - keys.map(prev_w).astype("float64").values
        if "risk_level" in previous.columns:
            frame["previous_level"] = keys.map(prev["risk_level"].astype(object)).values
        frame["change"] = keys.map(changes.set_index(changes[key].astype(str))["change"]).fillna("")
    for col in ("drivers", "rationale", "status", "error_code"):
        if col in results.columns:
            frame[col] = results[col]
    if "drivers" in frame.columns:
        frame["drivers"] = frame["drivers"].map(
            lambda v: "; ".join(map(str, v)) if isinstance(v, list | tuple | np.ndarray) else v
        )
    if "risk_score" in frame.columns:
        order = frame["risk_score"].sort_values(ascending=False, na_position="last", kind="stable")
        frame = frame.loc[order.index]
    return frame.reset_index(drop=True)


def summary_line(
    results: pd.DataFrame,
    *,
    changes: pd.DataFrame | None = None,
    flags: pd.DataFrame | None = None,
    since: str | None = None,
) -> str:
    """The review in one or two sentences: the weighted score and its level, the share of the
    portfolio at the highest level present, the top contributor, coverage, and what changed.

        >>> summary_line(results, changes=pb.compare(before, results))   # doctest: +SKIP
        'Weighted risk score 47.9/100 (medium). High risk: 22.9% of gross weight (8 positions). ...'
    """
    parts = []
    score = weighted_score(results)
    if score is None:
        parts.append("No position has a score.")
    else:
        parts.append(f"Weighted risk score {score:.1f}/100 ({level_for(score, results=results)}).")
        shares = level_shares(results)
        scored_levels = shares[shares["risk_level"] != NO_SCORE]
        if len(scored_levels):
            top = scored_levels.iloc[-1]
            parts.append(
                f"{str(top['risk_level']).capitalize()} risk: {top['share']:.1%} of gross weight "
                f"({int(top['positions'])} position{'s' if top['positions'] != 1 else ''})."
            )
        contrib = contributions(results, top=1)
        if len(contrib):
            key = key_column(results) or contrib.columns[0]
            parts.append(
                f"Top contributor: {contrib.iloc[0][key]} ({contrib.iloc[0]['share']:.1%} of the "
                "risk contribution)."
            )
    table = coverage(results, flags=flags)
    reviewed = int(table.iloc[0]["positions"])
    untrusted = int(table.iloc[1]["positions"])
    line = f"{reviewed} of {len(results)} reviewed"
    if untrusted:
        line += f", {untrusted} not trusted"
    parts.append(line + ".")
    if changes is not None:
        parts.append(changes_line(changes, since=since))
    return " ".join(parts)


def changes_line(changes: pd.DataFrame, *, since: str | None = None) -> str:
    """What ``pb.compare`` found, in one sentence naming each changed position; ``since`` names
    the run compared with (default: its run id, else "the previous run")."""
    prev = since or (
        f"run {changes.attrs['previous_run']}" if changes.attrs.get("previous_run") else None
    )
    since = f"since {prev}" if prev else "since the previous run"
    if not len(changes):
        return f"No change {since}."
    key = changes.attrs.get("key") or changes.columns[0]
    names = ", ".join(f"{k} ({c})" for k, c in zip(changes[key], changes["change"], strict=True))
    n = len(changes)
    return f"{n} position{'s' if n != 1 else ''} changed {since}: {names}."


def frame_sha256(frame: pd.DataFrame, *, columns: Sequence[str] | None = None) -> str:
    """A stable hash of a frame's values (columns in order, as text): the identity of a set of
    positions when no input file is known."""
    cols = [c for c in (columns if columns is not None else frame.columns) if c in frame.columns]
    digest = hashlib.sha256()
    digest.update("\x1f".join(map(str, cols)).encode())
    for row in frame[cols].itertuples(index=False):
        digest.update(("\x1e" + "\x1f".join(map(str, row))).encode())
    return digest.hexdigest()
