"""Load and check a portfolio: a CSV or TSV (any common separator, decimal commas), an Excel
workbook, a Parquet file or a DataFrame in, a clean DataFrame out.

>>> portfolio = load_portfolio("testdata/portfolio.csv")   # doctest: +SKIP
>>> portfolio.columns.tolist()                             # doctest: +SKIP
['ticker', 'name', 'sector', 'weight', 'beta', 'volatility', 'notes']
"""

from __future__ import annotations

import csv
import gzip
import os
import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from portfolio_batch.errors import InputError, missing_extra

__all__ = ["OPTIONAL_COLUMNS", "load_portfolio"]

OPTIONAL_COLUMNS = ("name", "sector", "beta", "volatility", "notes")
_NUMERIC = ("weight", "beta", "volatility")

_TEXT = (".csv", ".tsv", ".txt")
_EXCEL = (".xlsx", ".xlsm")
_PARQUET = (".parquet", ".pq")
_SEPARATORS = (",", ";", "\t", "|")
# The separator is sniffed from the head only; pandas' C parser then reads the whole file (a
# million rows in about a second; sep=None's Python engine is several times slower).
_HEAD_BYTES = 1 << 16
_HEAD_LINES = 200
_COMMA_DECIMAL = re.compile(r"[-+]?(\d{1,3}(\.\d{3})+|\d*),\d+")
_POINT_DECIMAL = re.compile(r"[-+]?\d*\.\d+([eE][-+]?\d+)?")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(\.\d{3})+")  # 1.234: a thousand, or one and a bit
_TOTAL = re.compile(
    r"((grand|sub)[\s_-]*)?(portfolio[\s_-]+)?(totals?|sum|summe|gesamt)([\s_-]+portfolio)?\s*:?",
    re.IGNORECASE,
)
_ID_COLUMNS = ("symbol", "isin", "cusip", "sedol", "figi", "ric", "id", "security", "instrument")
# Long-only weights should sum to 1; within this band a rounding or a cash residual is normal.
_SUM_BAND = (0.98, 1.02)


@dataclass
class _Source:
    """What was read and how, for the line numbers and the hints in the errors."""

    path: Path
    kind: str  # "text", "excel" or "parquet"
    sep: str = ","
    decimal: str = "."
    sheets: list[str] = field(default_factory=list)
    head: list[list[str]] = field(default_factory=list)  # the first lines, split by sep

    def how(self) -> str:
        if self.kind == "text":
            sep = "tab" if self.sep == "\t" else repr(self.sep)
            comma = ", decimal comma" if self.decimal == "," else ""
            return f"read with separator {sep}{comma}: "
        if self.kind == "excel":
            of = f" of {len(self.sheets)}" if len(self.sheets) > 1 else ""
            return f"first sheet {self.sheets[0]!r}{of}: " if self.sheets else ""
        return ""


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    return "".join(suffixes) if suffixes[-1:] == [".gz"] else path.suffix.lower()


def _sniff(path: Path, suffix: str) -> tuple[str, str, list[list[str]]]:
    """The separator, the decimal mark and the first lines of a text file."""
    opener = gzip.open if suffix.endswith(".gz") else open
    with opener(path, "rb") as handle:
        raw = handle.read(_HEAD_BYTES)
    lines = raw.decode("utf-8-sig", errors="replace").splitlines()
    if len(raw) == _HEAD_BYTES:
        lines = lines[:-1]  # cut mid-line
    lines = [line for line in lines if line.strip()][:_HEAD_LINES]

    def split(sep: str) -> list[list[str]]:
        try:
            return list(csv.reader(lines, delimiter=sep))
        except csv.Error:  # NUL bytes: a binary file, which pandas reports properly
            return []

    def score(sep: str) -> tuple[bool, int, int]:
        counts = [len(row) for row in split(sep)]
        if not counts:
            return (False, 0, 0)
        fields, lines_with = Counter(counts).most_common(1)[0]
        # The separator that splits the header like most lines, into the most fields; title
        # lines above the header lower every separator's count alike.
        return (fields > 1 and counts[0] == fields, lines_with if fields > 1 else 0, fields)

    sep = max(_SEPARATORS, key=score)  # a tie goes to the first: ',' before ';', tab and '|'

    head = split(sep)
    decimal = "."
    if sep != ",":
        cells = [cell.strip() for row in head[1:] for cell in row]
        commas = any(_COMMA_DECIMAL.fullmatch(c) for c in cells)
        points = any(_POINT_DECIMAL.fullmatch(c) and not _THOUSANDS.fullmatch(c) for c in cells)
        if commas and not points:
            decimal = ","
    return sep, decimal, head


def _read(path: Path, key: str) -> tuple[pd.DataFrame, _Source]:
    fix = "pass the path of a .csv, .tsv, .xlsx or .parquet portfolio, or a DataFrame"
    if path.is_dir():
        raise InputError(f"{path}: is a directory; {fix}")
    if not path.is_file():
        raise InputError(f"{path}: no such file; {fix}")
    suffix = _suffix(path)
    try:
        if suffix in _PARQUET:
            return _read_parquet(path), _Source(path, "parquet")
        if suffix in _EXCEL:
            return _read_excel(path, key)
        if suffix in (".xls", ".ods", ".numbers"):
            raise InputError(
                f"{path}: {suffix} workbooks are not read; save the sheet as .xlsx or as a CSV "
                "(UTF-8) file"
            )
        if suffix.removesuffix(".gz") in _TEXT:
            return _read_text(path, suffix, key)
    except PermissionError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from exc
    raise InputError(
        f"{path}: unknown file type {path.suffix!r}; use a .csv, .tsv, .xlsx or .parquet file, "
        "or pass a DataFrame"
    )


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except PermissionError:
        raise
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(
            f"{path}: not a readable Parquet file ({exc}); export the portfolio again as "
            ".parquet or .csv"
        ) from exc


def _header_line(head: list[list[str]], column: str) -> int | None:
    """The line (1-based) of the first line after the first that has a ``column`` cell: the
    real header under a title line."""
    for number, row in enumerate(head[1:], start=2):
        if any(cell.strip().lower() == column.lower() for cell in row):
            return number
    return None


def _read_text(path: Path, suffix: str, key: str) -> tuple[pd.DataFrame, _Source]:
    head: list[list[str]] = []
    try:
        sep, decimal, head = _sniff(path, suffix)
        # The key as text: "0700" (a Hong Kong ticker) must not become 700. Under the name
        # pandas gives the header cell, which may be padded (" ticker ").
        padded = [c for c in (head[0] if head else []) if c.strip() == key]
        as_text = {name: str for c in [key, *padded] for name in (c, c.lstrip(" "))}
        frame = pd.read_csv(
            path,
            sep=sep,
            decimal=decimal,
            dtype=as_text,
            skipinitialspace=True,
            # Blank lines as empty rows, dropped later, so that row n is still line n + 2.
            skip_blank_lines=False,
        )
    except pd.errors.EmptyDataError as exc:
        raise InputError(
            f"{path}: the file is empty; a portfolio CSV needs a header line "
            f"({key},weight,...) and one line per position"
        ) from exc
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: not a text CSV file (byte {exc.start} is not UTF-8); save the portfolio "
            "as a UTF-8 .csv (Excel: Save As 'CSV UTF-8'), or as .xlsx or .parquet"
        ) from exc
    except pd.errors.ParserError as exc:
        at = _header_line(head, key)
        if at is not None:
            raise InputError(
                f"{path}: the header looks like line {at} ({', '.join(head[at - 1][:6])}), not "
                f"line 1: delete the lines above it"
            ) from exc
        raise InputError(
            f"{path}: not a well-formed CSV ({exc}); check the quoting and the number of "
            "fields on that line"
        ) from exc
    except (EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: not a readable gzip file ({exc}); compress it again") from exc
    return frame, _Source(path, "text", sep=sep, decimal=decimal, head=head)


def _read_excel(path: Path, key: str) -> tuple[pd.DataFrame, _Source]:
    try:
        from openpyxl.utils.exceptions import InvalidFileException
    except ImportError:
        raise missing_extra("openpyxl", "excel") from None
    try:
        with pd.ExcelFile(path, engine="openpyxl") as book:
            sheets = [str(name) for name in book.sheet_names]
            frame = pd.read_excel(book, sheet_name=sheets[0], dtype={key: str})
    except PermissionError:
        raise
    except (zipfile.BadZipFile, InvalidFileException, OSError, KeyError, ValueError) as exc:
        raise InputError(
            f"{path}: not a readable Excel workbook ({exc}); save it again as .xlsx, or export "
            "the sheet as a CSV (UTF-8) file"
        ) from exc
    head = [[str(c) for c in frame.columns]] + [
        ["" if pd.isna(v) else str(v) for v in row] for row in frame.head(20).itertuples(False)
    ]
    return frame, _Source(path, "excel", sheets=sheets, head=head)


def _normalise(name: str) -> str:
    return re.sub(r"[^0-9a-z%]", "", name.lower())


def _missing_column(
    column: str, key: str, df: pd.DataFrame, origin: str, src: _Source | None
) -> InputError:
    """One line: which column is missing, how the file was read, what is there, the likely fix."""
    columns = [str(c) for c in df.columns]
    shown = ", ".join(map(repr, columns[:12])) + (
        f" and {len(columns) - 12} more" if len(columns) > 12 else ""
    )
    want = _normalise(column)
    header_at = _header_line(src.head, column) if src is not None else None
    glued = [
        c for c in columns if any(s in c for s in _SEPARATORS[1:]) and column.lower() in c.lower()
    ]
    # "ticker weight": a file separated by spaces, read as one column ("Ticker Symbol" is not)
    spaced = [c for c in columns if {key.lower(), "weight"} <= {w.lower() for w in c.split()}]
    near = [c for c in columns if _normalise(c) == want] or [
        c for c in columns if _normalise(c).startswith(want) and not glued and not spaced
    ]
    if near:
        found = near[0]
        if column == key:
            fix = f"rename the column {found!r} to {key!r}, or pass key={found!r}"
        else:
            percent = "%" in found or re.search(r"pct|percent", found, re.IGNORECASE)
            fix = f"rename the column {found!r} to 'weight'" + (
                " and divide it by 100 (weights are fractions: 0.05 = 5 %)" if percent else ""
            )
    elif header_at is not None and src is not None:
        unit = "line" if src.kind == "text" else "row"
        fix = (
            f"the header looks like {unit} {header_at} ({', '.join(src.head[header_at - 1][:6])}): "
            f"delete the {unit}s above it"
        )
    elif spaced:
        fix = (
            f"the header {spaced[0]!r} is one column: the fields are separated by spaces; "
            "separate them with ',', ';', a tab or '|'"
        )
    elif glued:
        sep = next(s for s in _SEPARATORS[1:] if s in glued[0])
        sep_name = "'\\t'" if sep == "\t" else repr(sep)
        fix = (
            f"the header {glued[0]!r} is one column: read the file with sep={sep_name} "
            "(pd.read_csv(path, sep=...)), or pass the path to load_portfolio, which finds the "
            "separator itself"
        )
    elif column == key and (ids := [c for c in columns if _normalise(c) in _ID_COLUMNS]):
        fix = (
            f"pass key={ids[0]!r} if that column identifies the positions, or add a {key!r} column"
        )
    elif column == key:
        fix = f"add a {key!r} column, or pass key='<the column that identifies the positions>'"
    else:
        fix = "add a 'weight' column: each position's fraction of the portfolio (0.05 = 5 %)"
    how = src.how() if src is not None else ""
    return InputError(f"{origin}: no column {column!r} ({how}columns {shown}); {fix}")


def load_portfolio(
    path_or_df: str | os.PathLike[str] | pd.DataFrame, *, key: str = "ticker"
) -> pd.DataFrame:
    """A checked copy of a portfolio: the ``key`` column (unique, non-empty) and a numeric
    ``weight`` (a fraction of the portfolio, negative for a short); optional ``name``,
    ``sector``, ``beta``, ``volatility`` (annualised, 0.35 = 35 %), ``notes`` and any extra
    columns, kept as they are. ``attrs["shorts"]`` counts the negative weights.

        >>> float(load_portfolio(pd.DataFrame({"ticker": ["AAPL", "MSFT"], "weight": [0.6, 0.4]})).weight.sum())
        1.0

    Files: ``.csv``/``.tsv``/``.txt`` (optionally ``.gz``) with ``,``, ``;``, tab or ``|``
    between fields and a decimal point or, with ``;``/tab/``|``, a decimal comma (both found from
    the file's first lines); ``.xlsx`` (its first sheet; needs the ``excel`` extra); ``.parquet``.
    Lines with no value at all are skipped.

    Errors name the row (its line for text files, its row for Excel), the column and the fix. A
    total line, weights in percent or in amounts, or every weight 0, are errors; weights that do
    not sum to 1 are a ``UserWarning`` naming the sum (the net and gross exposure with shorts).
    """
    df, src = _frame_of(path_or_df, key)
    origin = f"{src.path}" if src is not None else "the DataFrame"
    df, rows = _drop_empty(df, src)
    where = _locator(df, src, rows)
    if df.empty:
        raise InputError(f"{origin} has no rows; a portfolio needs at least one position")
    for column in (key, "weight"):
        if column not in df.columns:
            raise _missing_column(column, key, df, origin, src)
    _check_keys(df, key, where)
    for column in _NUMERIC:
        if column in df.columns:
            df[column] = _numbers(df, column, src, where)
    _check_weights(df["weight"].to_numpy(), where)
    _check_volatility(df, where)
    df.attrs["shorts"] = _check_exposure(df["weight"].to_numpy(), origin)
    return df


def _frame_of(
    path_or_df: str | os.PathLike[str] | pd.DataFrame, key: str
) -> tuple[pd.DataFrame, _Source | None]:
    """A copy of the frame, or the file read (and how, for the errors)."""
    if isinstance(path_or_df, pd.DataFrame):
        return path_or_df.copy(), None
    if isinstance(path_or_df, (str, os.PathLike)):
        return _read(Path(path_or_df), key)
    raise InputError(
        "load_portfolio() takes a CSV, TSV, Excel or Parquet path or a DataFrame, got "
        f"{type(path_or_df).__name__}"
    )


def _drop_empty(df: pd.DataFrame, src: _Source | None) -> tuple[pd.DataFrame, np.ndarray]:
    """Header cells stripped; for a file, its empty lines and empty trailing columns dropped.
    Also returns the file's row of each frame row, for the errors."""
    df.columns = [
        c.strip().strip("\ufeff").strip() if isinstance(c, str) else c for c in df.columns
    ]
    rows = np.arange(len(df))
    if src is not None:
        # Lines of separators only (";;;"), blank lines, and the empty columns a trailing
        # separator makes, as spreadsheets export them.
        empty_cols = [
            c
            for c in df.columns
            if isinstance(c, str) and re.fullmatch(r"Unnamed: \d+", c) and df[c].isna().all()
        ]
        df = df.drop(columns=empty_cols)
        filled = ~df.isna().all(axis=1).to_numpy()
        if not filled.all():
            rows, df = rows[filled], df[filled].reset_index(drop=True)
    return df, rows


def _locator(df: pd.DataFrame, src: _Source | None, rows: np.ndarray) -> Callable[[int], str]:
    """``where(pos)``: how an error names the frame's row ``pos`` (a file's line or row)."""

    def where(pos: int) -> str:
        if src is not None and src.kind == "text":
            return (
                f"{src.path.name} line {int(rows[pos]) + 2} (row {pos})"  # +1 header, +1 one-based
            )
        if src is not None and src.kind == "excel":
            return f"{src.path.name} row {int(rows[pos]) + 2}"  # the row number Excel shows
        if src is not None:
            return f"{src.path.name} row {pos}"
        label = df.index[pos]
        return f"row {pos} (index {label.item() if isinstance(label, np.generic) else label!r})"

    return where


def _check_keys(df: pd.DataFrame, key: str, where: Callable[[int], str]) -> None:
    """Every key present, not a total line, unique; text keys are stored stripped."""
    keys = df[key]
    is_text = keys.dtype == object or pd.api.types.is_string_dtype(keys.dtype)
    missing = keys.isna().to_numpy()
    text = [
        "" if m else str(v).strip() for v, m in zip(keys.tolist(), missing.tolist(), strict=True)
    ]
    _refuse_total_lines(df, text, key, where)
    if not all(text):
        pos = text.index("")
        weights = pd.to_numeric(df["weight"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
        if _sum_of_others(weights, pos):
            raise InputError(
                f"{where(pos)}, column {key!r}: the key is empty and the weight "
                f"{weights[pos]:g} is the sum of all the other weights, so this looks like a total "
                "line, not a position; delete that line"
            )
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


def _numbers(
    df: pd.DataFrame, column: str, src: _Source | None, where: Callable[[int], str]
) -> pd.Series:
    """``column`` as float64; a value that is not a finite number (or an empty weight) is an
    error naming its row."""
    raw = df[column]
    numbers = pd.to_numeric(raw, errors="coerce")
    bad = (numbers.isna() & raw.notna()).to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        value = raw.iloc[pos]
        hint = "write it as a decimal fraction (e.g. 0.05 for 5 %, without a % sign)"
        if isinstance(value, str) and _COMMA_DECIMAL.fullmatch(value.strip()):
            hint = (
                "the file mixes decimal commas and decimal points; use one of them throughout"
                if src is not None and src.kind == "text" and src.sep != ","
                else "write it with a decimal point (0.05), or give the file as ;-separated "
                "with decimal commas throughout"
            )
        raise InputError(f"{where(pos)}, column {column!r}: {value!r} is not a number; {hint}")
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
    return numbers.astype(np.float64)


def _check_volatility(df: pd.DataFrame, where: Callable[[int], str]) -> None:
    if "volatility" in df.columns and (df["volatility"] > 5).any():
        pos = int(np.flatnonzero((df["volatility"] > 5).to_numpy())[0])
        raise InputError(
            f"{where(pos)}, column 'volatility': {df['volatility'].iloc[pos]:g} looks like a percentage; "
            "volatility is an annualised fraction (0.35 = 35 %): divide the column by 100"
        )


def _check_exposure(weights: np.ndarray, origin: str) -> int:
    """The number of shorts; every weight 0 is an error, a net exposure away from 1 a warning."""
    shorts = int((weights < 0).sum())
    net, gross = float(weights.sum()), float(np.abs(weights).sum())
    if gross == 0:
        # nothing to weight the scores by: the weighted score and the shares divide by the gross
        raise InputError(
            f"{origin}: every weight in column 'weight' is 0 ({len(weights)} position"
            f"{'s' if len(weights) != 1 else ''}); give each position its weight, a fraction of the "
            "portfolio (0.05 = 5 %)"
        )
    if not _SUM_BAND[0] <= net <= _SUM_BAND[1]:
        exposure = (
            f" (net exposure; gross {gross:.4g}, with {shorts} short position"
            f"{'s' if shorts != 1 else ''})"
            if shorts
            else ""
        )
        warnings.warn(
            f"{origin}: the weights sum to {net:.4g}{exposure}, not 1; each weight is used as "
            "given, as a fraction of the portfolio. If positions are missing or the weights are "
            "stale, fix the file; to rescale, divide the weights by their sum",
            UserWarning,
            stacklevel=3,  # the caller of load_portfolio
        )
    return shorts


def _refuse_total_lines(
    df: pd.DataFrame, text: list[str], key: str, where: Callable[[int], str]
) -> None:
    """A spreadsheet's TOTAL/SUM line is not a position: refuse it by its line.

    A key such as ``SUM`` with a real name beside it is a ticker (Summit Materials), not a total.
    """
    # In Arrow (RE2) rather than one Python regex call per row: a million keys in milliseconds.
    import pyarrow as pa
    import pyarrow.compute as pc

    pattern = rf"^\s*(?:{_TOTAL.pattern})\s*$"

    def matches(values: pa.Array, regex: str = pattern) -> np.ndarray:
        hit = pc.match_substring_regex(values, pattern=regex, ignore_case=True)
        return np.asarray(hit.fill_null(regex != pattern), dtype=bool)

    by_key = matches(pa.array(df[key].astype("string")))
    names = None
    if "name" in df.columns:
        names = pa.array(df["name"].astype("string"))  # numbers as text, gaps as nulls
        by_name, unnamed = matches(names), matches(names, r"^\s*$")
    else:
        by_name, unnamed = np.zeros(len(text), bool), np.ones(len(text), bool)
    hits = np.flatnonzero(by_name | (by_key & unnamed))
    if not hits.size:
        return
    pos = int(hits[0])
    if by_name[pos] and names is not None:
        column, value = "name", str(names[pos].as_py()).strip()
    else:
        column, value = key, text[pos]
    really = f"; if {value!r} really is a {key}, give it a 'name'" if column == key else ""
    raise InputError(
        f"{where(pos)}, column {column!r}: {value!r} is a total line, not a position; delete "
        f"that line (portfolio_batch adds up the weights itself){really}"
    )


def _sum_of_others(weights: np.ndarray, pos: int) -> bool:
    """Whether ``weights[pos]`` is (within 0.5 %) the sum of the other weights, of three or more."""
    others = float(np.nansum(weights)) - float(weights[pos])
    return (
        len(weights) >= 3
        and bool(np.isfinite(weights[pos]))
        and others > 0
        and abs(float(weights[pos]) - others) <= 0.005 * others
    )


def _check_weights(weights: np.ndarray, where: Callable[[int], str]) -> None:
    """Weights that cannot be fractions of the portfolio: a total line's sum, percentages, amounts."""
    if len(weights) == 0:
        return
    net, gross = float(weights.sum()), float(np.abs(weights).sum())
    big = int(np.argmax(np.abs(weights)))
    last = len(weights) - 1
    # An unnamed total line: the last one, and the weights only add up to 1 (or 100) without it.
    # ([0.5, 0.25, 0.25] is a portfolio, not a total.)
    if not _SUM_BAND[0] <= net <= _SUM_BAND[1] and _sum_of_others(weights, last):
        raise InputError(
            f"{where(last)}, column 'weight': {weights[last]:g} is the sum of all the other "
            "weights, so this looks like a total line, not a position; delete that line"
        )
    # Percent (or amounts) whatever their sum: a position bigger than the whole portfolio, and a
    # sum or a gross far above any fund's. A 130/30 book (one 1.3 long, net 1) passes.
    above_one = abs(float(weights[big])) > 1
    # A broad book in percent has no weight above 1 (150 positions of 0.67 %) but sums to about
    # 100: no fund is 5 times net long or 20 times gross, whatever the size of each weight.
    if (above_one and (net > 1.5 or gross > 5)) or net > 5 or gross > 20:
        exposure = f" (gross {gross:g})" if (weights < 0).any() else ""
        if 95 <= net <= 105 or (95 <= gross <= 405 and net < 95):
            what = "they look like percentages: divide the weight column by 100"
        else:
            what = (
                "if they are percentages, divide the weight column by 100; if they are amounts "
                f"(market values), divide each by their sum ({net:g})"
            )
        largest = (
            f"{weights[big]:g} is more than the whole portfolio and "
            if above_one
            else f"{weights[big]:g} is the largest weight and "
        )
        raise InputError(
            f"{where(big)}, column 'weight': {largest}the weights sum to {net:g}{exposure}; "
            f"weights are fractions of the portfolio (0.05 = 5 %): {what}"
        )
