"""Load and check a portfolio: CSV, Parquet or a DataFrame in, a clean DataFrame out.

>>> portfolio = load_portfolio("testdata/portfolio.csv")   # doctest: +SKIP
>>> portfolio.columns.tolist()                             # doctest: +SKIP
['ticker', 'name', 'sector', 'weight', 'beta', 'volatility', 'notes']
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from portfolio_batch.errors import InputError

__all__ = ["OPTIONAL_COLUMNS", "load_portfolio"]

OPTIONAL_COLUMNS = ("name", "sector", "beta", "volatility", "notes")
_NUMERIC = ("weight", "beta", "volatility")


def _read(path: Path, key: str) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(
            f"{path}: no such file; pass the path of a .csv or .parquet portfolio, or a DataFrame"
        )
    suffix = "".join(path.suffixes[-2:]).lower()
    if suffix.endswith((".parquet", ".pq")):
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise InputError(
                f"{path}: not a readable Parquet file ({exc}); export the portfolio again as "
                ".parquet or .csv"
            ) from exc
    if suffix.endswith((".csv", ".csv.gz", ".txt")):
        try:
            # The key as text: "0700" (a Hong Kong ticker) must not become 700.
            return pd.read_csv(path, dtype={key: str}, skipinitialspace=True)
        except pd.errors.EmptyDataError as exc:
            raise InputError(
                f"{path}: the file is empty; a portfolio CSV needs a header line "
                f"({key},weight,...) and one line per position"
            ) from exc
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{path}: not a text CSV file (byte {exc.start} is not UTF-8); save the portfolio "
                "as a UTF-8 .csv, or as .parquet"
            ) from exc
        except pd.errors.ParserError as exc:
            raise InputError(
                f"{path}: not a well-formed CSV ({exc}); check the quoting and the number of "
                "fields on that line"
            ) from exc
    raise InputError(
        f"{path}: unknown file type {path.suffix!r}; use a .csv or .parquet file, or pass a DataFrame"
    )


def load_portfolio(
    path_or_df: str | os.PathLike[str] | pd.DataFrame, *, key: str = "ticker"
) -> pd.DataFrame:
    """A checked copy of a portfolio: the ``key`` column (unique, non-empty) and a numeric
    ``weight`` (a fraction of the portfolio); optional ``name``, ``sector``, ``beta``,
    ``volatility`` (annualised, 0.35 = 35 %), ``notes`` and any extra columns, kept as they are.

        >>> load_portfolio(pd.DataFrame({"ticker": ["AAPL", "MSFT"], "weight": [0.6, 0.4]})).weight.sum()
        1.0

    Errors name the row (its CSV line for files), the column and the fix.
    """
    if isinstance(path_or_df, pd.DataFrame):
        df, source = path_or_df.copy(), None
    elif isinstance(path_or_df, (str, os.PathLike)):
        source = Path(path_or_df)
        df = _read(source, key)
    else:
        raise InputError(
            f"load_portfolio() takes a CSV/Parquet path or a DataFrame, got {type(path_or_df).__name__}"
        )

    def where(pos: int) -> str:
        if source is not None and source.suffix.lower() in (".csv", ".txt", ".gz"):
            return f"{source.name} line {pos + 2} (row {pos})"  # +1 header, +1 one-based
        if source is not None:
            return f"{source.name} row {pos}"
        label = df.index[pos]
        return f"row {pos} (index {label.item() if isinstance(label, np.generic) else label!r})"

    origin = f"{source}" if source is not None else "the DataFrame"
    df.columns = [c.strip() if isinstance(c, str) else c for c in df.columns]
    if df.empty:
        raise InputError(f"{origin} has no rows; a portfolio needs at least one position")
    for column in (key, "weight"):
        if column not in df.columns:
            near = [c for c in df.columns if isinstance(c, str) and c.lower() == column.lower()]
            hint = f" (found {near[0]!r}: rename it)" if near else ""
            extra = " or pass key='<your id column>'" if column == key else ""
            raise InputError(
                f"{origin} has no {column!r} column{hint}; columns are {list(map(str, df.columns))}. "
                f"Add a {column!r} column{extra}"
            )

    keys = df[key]
    is_text = keys.dtype == object or pd.api.types.is_string_dtype(keys.dtype)
    missing = keys.isna().to_numpy()
    text = [
        "" if m else str(v).strip() for v, m in zip(keys.tolist(), missing.tolist(), strict=True)
    ]
    if not all(text):
        pos = text.index("")
        raise InputError(
            f"{where(pos)}, column {key!r}: the key is empty; give every position a {key}"
        )
    seen: dict[str, int] = {}
    for pos, value in enumerate(text):
        first = seen.setdefault(value, pos)
        if first != pos:
            raise InputError(
                f"{where(first)} and {where(pos)} have the same {key} {value!r}; keys must be "
                "unique: merge the two positions (add their weights) or remove one"
            )
    if is_text:
        df[key] = pd.Series(text, index=df.index, dtype=keys.dtype)

    for column in _NUMERIC:
        if column not in df.columns:
            continue
        raw = df[column]
        numbers = pd.to_numeric(raw, errors="coerce")
        bad = (numbers.isna() & raw.notna()).to_numpy()
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{where(pos)}, column {column!r}: {raw.iloc[pos]!r} is not a number; write it as a "
                f"decimal fraction (e.g. 0.05 for 5 %, without a % sign)"
            )
        if column == "weight" and numbers.isna().any():
            pos = int(np.flatnonzero(numbers.isna().to_numpy())[0])
            raise InputError(
                f"{where(pos)}, column 'weight' is empty; give every position a weight (0 if none)"
            )
        values = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isinf(values).any():
            pos = int(np.flatnonzero(np.isinf(values))[0])
            raise InputError(
                f"{where(pos)}, column {column!r}: {raw.iloc[pos]!r} is infinite; give a finite number"
            )
        df[column] = numbers.astype(np.float64)

    total = float(df["weight"].sum())
    if 90 <= total <= 110 and df["weight"].abs().max() > 1:
        raise InputError(
            f"{origin}: the weights sum to {total:g}, which looks like percentages; weights are "
            "fractions of the portfolio: divide the weight column by 100"
        )
    if "volatility" in df.columns and (df["volatility"] > 5).any():
        pos = int(np.flatnonzero((df["volatility"] > 5).to_numpy())[0])
        raise InputError(
            f"{where(pos)}, column 'volatility': {df['volatility'].iloc[pos]:g} looks like a percentage; "
            "volatility is an annualised fraction (0.35 = 35 %): divide the column by 100"
        )
    return df
