"""load_portfolio: what a user's file turns into, and the errors that tell them what to fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from portfolio_batch import InputError, load_portfolio


def test_loads_the_shipped_portfolio(testdata: Path) -> None:
    portfolio = load_portfolio(testdata / "portfolio.csv")
    assert list(portfolio.columns) == [
        "ticker",
        "name",
        "sector",
        "weight",
        "beta",
        "volatility",
        "notes",
    ]
    assert len(portfolio) == 40
    assert portfolio["ticker"].is_unique
    assert portfolio["weight"].sum() == pytest.approx(1.0)
    assert portfolio["weight"].dtype == np.float64
    assert portfolio["volatility"].between(0, 1).all()
    assert "BRK.B" in set(portfolio["ticker"])


def test_parquet_and_dataframe_give_the_same_frame(testdata: Path, tmp_path: Path) -> None:
    from_csv = load_portfolio(testdata / "portfolio.csv")
    from_csv.to_parquet(tmp_path / "p.parquet")
    from_parquet = load_portfolio(tmp_path / "p.parquet")
    pd.testing.assert_frame_equal(from_parquet, from_csv, check_dtype=False)
    assert from_parquet["weight"].tolist() == from_csv["weight"].tolist()


def test_dataframe_input_is_copied_not_mutated() -> None:
    df = pd.DataFrame({"ticker": [" AAPL ", "MSFT"], "weight": ["0.6", "0.4"], "extra": [1, 2]})
    before = df.copy(deep=True)
    out = load_portfolio(df)
    pd.testing.assert_frame_equal(df, before)
    assert out is not df
    assert out["ticker"].tolist() == ["AAPL", "MSFT"]  # stripped
    assert out["weight"].tolist() == [0.6, 0.4]  # numeric
    assert out["extra"].tolist() == [1, 2]  # extra columns carried along


def test_keys_keep_leading_zeros(tmp_path: Path) -> None:
    path = tmp_path / "hk.csv"
    path.write_text("ticker,weight\n0700,0.5\n0005,0.5\n")
    assert load_portfolio(path)["ticker"].tolist() == ["0700", "0005"]


def test_custom_key_column() -> None:
    df = pd.DataFrame({"isin": ["US0378331005", "US5949181045"], "weight": [0.5, 0.5]})
    assert load_portfolio(df, key="isin")["isin"].tolist() == ["US0378331005", "US5949181045"]


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "portfolio.csv"
    path.write_text(text)
    return path


def test_missing_key_column_names_it_and_the_fix(tmp_path: Path) -> None:
    path = _csv(tmp_path, "symbol,weight\nAAPL,1\n")
    with pytest.raises(InputError) as caught:
        load_portfolio(path)
    assert str(caught.value) == (
        f"{path}: no column 'ticker' (read with separator ',': columns 'symbol', 'weight'); "
        "pass key='symbol' if that column identifies the positions, or add a 'ticker' column"
    )
    with pytest.raises(InputError, match=r"no column 'ticker' \(columns 'asset', 'weight'\); add"):
        load_portfolio(pd.DataFrame({"asset": ["A"], "weight": [1.0]}))


def test_missing_weight_suggests_the_near_name(tmp_path: Path) -> None:
    path = _csv(tmp_path, "ticker,Weight\nAAPL,1\n")
    with pytest.raises(
        InputError, match=r"no column 'weight' .*; rename the column 'Weight' to 'weight'$"
    ):
        load_portfolio(path)
    path = _csv(tmp_path, "ticker,Weight (%)\nAAPL,60\nMSFT,40\n")
    with pytest.raises(
        InputError,
        match=r"rename the column 'Weight \(%\)' to 'weight' and divide it by 100 ",
    ):
        load_portfolio(path)


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    path = _csv(tmp_path, "ticker,weight\nAAPL,0.3\nMSFT,0.3\nAAPL,0.4\n")
    with pytest.raises(
        InputError, match=r"line 2 \(row 0\) and portfolio.csv line 4 \(row 2\).*'AAPL'.*merge"
    ):
        load_portfolio(path)


def test_empty_key_names_the_line(tmp_path: Path) -> None:
    path = _csv(tmp_path, "ticker,weight\nAAPL,0.5\n,0.5\n")
    with pytest.raises(InputError, match=r"line 3 \(row 1\), column 'ticker': the key is empty"):
        load_portfolio(path)
    with pytest.raises(InputError, match=r"row 1 \(index 'b'\), column 'ticker'"):
        load_portfolio(pd.DataFrame({"ticker": ["A", "  "], "weight": [1, 2]}, index=["a", "b"]))


def test_non_numeric_weight_names_line_column_and_value(tmp_path: Path) -> None:
    path = _csv(tmp_path, "ticker,weight\nAAPL,0.5\nMSFT,5%\n")
    with pytest.raises(
        InputError, match=r"line 3 \(row 1\), column 'weight': '5%' is not a number.*0.05"
    ):
        load_portfolio(path)


def test_nan_weight_is_rejected(tmp_path: Path) -> None:
    path = _csv(tmp_path, "ticker,weight\nAAPL,0.5\nMSFT,\n")
    with pytest.raises(InputError, match=r"line 3 \(row 1\), column 'weight' is empty"):
        load_portfolio(path)


def test_non_numeric_beta_is_rejected(tmp_path: Path) -> None:
    path = _csv(tmp_path, "ticker,weight,beta\nAAPL,1,high\n")
    with pytest.raises(InputError, match=r"column 'beta': 'high' is not a number"):
        load_portfolio(path)


def test_empty_frame(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no rows"):
        load_portfolio(_csv(tmp_path, "ticker,weight\n"))
    with pytest.raises(InputError, match="no rows"):
        load_portfolio(pd.DataFrame({"ticker": [], "weight": []}))


def test_percentages_are_caught() -> None:
    with pytest.raises(InputError, match=r"look like percentages: divide the weight column by 100"):
        load_portfolio(pd.DataFrame({"ticker": ["A", "B"], "weight": [60, 40]}))
    with pytest.raises(InputError, match=r"row 1 .*'volatility': 35 looks like a percentage"):
        load_portfolio(
            pd.DataFrame({"ticker": ["A", "B"], "weight": [0.5, 0.5], "volatility": [0.2, 35]})
        )


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_portfolio(tmp_path / "missing.csv")
    (tmp_path / "p.docx").write_text("x")
    with pytest.raises(InputError, match=r"unknown file type '.docx'; use a .csv, .tsv, .xlsx"):
        load_portfolio(tmp_path / "p.docx")
    (tmp_path / "old.xls").write_text("x")
    with pytest.raises(
        InputError, match=r"old.xls: .xls workbooks are not read; save the sheet as .xlsx"
    ):
        load_portfolio(tmp_path / "old.xls")
    with pytest.raises(InputError, match=r"is a directory; pass the path of a .csv, .tsv"):
        load_portfolio(tmp_path)
    with pytest.raises(InputError, match="takes a CSV, TSV, Excel or Parquet path or a DataFrame"):
        load_portfolio([1, 2])  # type: ignore[arg-type]


def test_unreadable_files_are_input_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.csv: the file is empty"):
        load_portfolio(empty)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 10)
    with pytest.raises(InputError, match=r"binary\.csv: not a text CSV file"):
        load_portfolio(binary)
    parquet = tmp_path / "fake.parquet"
    parquet.write_text("ticker,weight\nA,1\n")
    with pytest.raises(InputError, match=r"fake\.parquet: not a readable Parquet file"):
        load_portfolio(parquet)


# -- files as spreadsheets and other tools write them ---------------------------------------------


def test_semicolon_and_decimal_comma(tmp_path: Path) -> None:
    # Excel's "CSV" in a German/French locale: ';' between fields, ',' before the decimals.
    path = _csv(
        tmp_path,
        "ticker;name;weight;beta;volatility\n"
        '0700;"Tencent; Holdings";0,25;1,1;0,31\n'
        "AAPL;Apple, Inc.;0,75;1,2;0,26\n",
    )
    portfolio = load_portfolio(path)
    assert portfolio["ticker"].tolist() == ["0700", "AAPL"]
    assert portfolio["name"].tolist() == ["Tencent; Holdings", "Apple, Inc."]
    assert portfolio["weight"].tolist() == [0.25, 0.75]
    assert portfolio["beta"].tolist() == [1.1, 1.2]
    assert portfolio["volatility"].tolist() == [0.31, 0.26]


def test_semicolon_with_decimal_points(tmp_path: Path) -> None:
    path = _csv(tmp_path, "ticker;name;weight\nAAPL;Apple, Inc.;0.6\nMSFT;Microsoft;0.4\n")
    assert load_portfolio(path)["weight"].tolist() == [0.6, 0.4]
    # With decimal points in the file, '1,000' is a thousand, never read as 1.0.
    path = _csv(tmp_path, "ticker;weight;shares\nAAPL;0.6;1,000\nMSFT;0.4;250\n")
    assert load_portfolio(path)["shares"].tolist() == ["1,000", "250"]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("p.tsv", "ticker\tname\tweight\nAAPL\tApple, Inc.\t0.6\nMSFT\tMicrosoft\t0.4\n"),
        ("p.csv", "ticker\tname\tweight\nAAPL\tApple, Inc.\t0,6\nMSFT\tMicrosoft\t0,4\n"),
        ("p.txt", "ticker|name|weight\nAAPL|Apple, Inc.|0,6\nMSFT|Microsoft|0,4\n"),
    ],
    ids=["tsv", "tab-in-csv-decimal-comma", "pipe"],
)
def test_tab_and_pipe_separated(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    portfolio = load_portfolio(path)
    assert portfolio["name"].tolist() == ["Apple, Inc.", "Microsoft"]
    assert portfolio["weight"].tolist() == [0.6, 0.4]


def test_gzipped_semicolon_file(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "p.csv.gz"
    path.write_bytes(gzip.compress(b"ticker;weight\nAAPL;0,6\nMSFT;0,4\n"))
    assert load_portfolio(path)["weight"].tolist() == [0.6, 0.4]


def test_byte_order_mark_and_padded_headers(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_bytes(b"\xef\xbb\xbf ticker ; weight \n0700;0,5\n0005;0,5\n")
    portfolio = load_portfolio(path)
    assert portfolio.columns.tolist() == ["ticker", "weight"]
    assert portfolio["ticker"].tolist() == ["0700", "0005"]  # the key still read as text
    frame = pd.DataFrame({"\ufeffticker": ["A"], "weight\xa0": [1.0]})
    assert load_portfolio(frame).columns.tolist() == ["ticker", "weight"]


def test_empty_lines_are_skipped_and_line_numbers_stay_exact(tmp_path: Path) -> None:
    text = "ticker;weight;\nAAPL;0,5;\n\n;;\nMSFT;0,25;\n;0,25;\n"
    #       line 1         line 2    3  4    line 5     line 6
    with pytest.raises(
        InputError, match=r"portfolio.csv line 6 \(row 2\), column 'ticker': the key is empty"
    ):
        load_portfolio(_csv(tmp_path, text))
    portfolio = load_portfolio(_csv(tmp_path, text.replace("\n;0,25;\n", "\nNVDA;0,25;\n")))
    assert portfolio.columns.tolist() == ["ticker", "weight"]  # the trailing ';' column dropped
    assert portfolio["ticker"].tolist() == ["AAPL", "MSFT", "NVDA"]
    assert portfolio.index.tolist() == [0, 1, 2]


def test_mixed_decimal_marks_name_the_value(tmp_path: Path) -> None:
    path = _csv(tmp_path, "ticker;weight\nAAPL;0.5\nMSFT;0,5\n")
    with pytest.raises(
        InputError,
        match=r"line 3 \(row 1\), column 'weight': '0,5' is not a number; the file mixes",
    ):
        load_portfolio(path)


def test_wrong_case_key_names_the_separator_and_the_fix(tmp_path: Path) -> None:
    path = _csv(tmp_path, "Ticker;Weight\nAAPL;0,6\nMSFT;0,4\n")
    with pytest.raises(InputError) as caught:
        load_portfolio(path)
    assert str(caught.value) == (
        f"{path}: no column 'ticker' (read with separator ';', decimal comma: columns 'Ticker', "
        "'Weight'); rename the column 'Ticker' to 'ticker', or pass key='Ticker'"
    )
    path = _csv(tmp_path, "Ticker;weight\nAAPL;0,6\nMSFT;0,4\n")
    assert load_portfolio(path, key="Ticker")["Ticker"].tolist() == ["AAPL", "MSFT"]


def test_header_under_a_title_line(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "Portfolio as of 2024-06-30\nticker;name;weight\nAAPL;Apple;0,6\nMSFT;Microsoft;0,4\n",
    )
    with pytest.raises(
        InputError,
        match=r"portfolio.csv: no column 'ticker' \(read with separator ';', decimal comma: columns "
        r"'Portfolio as of 2024-06-30'\); the header looks like line 2 \(ticker, name, weight\): "
        r"delete the lines above it$",
    ):
        load_portfolio(path)


def test_a_header_read_as_one_column_says_which_separator() -> None:
    frame = pd.DataFrame({"ticker;weight": ["AAPL;0.6", "MSFT;0.4"]})  # read_csv without sep=';'
    with pytest.raises(
        InputError, match=r"the header 'ticker;weight' is one column: read the file with sep=';'"
    ):
        load_portfolio(frame)


def test_a_file_separated_by_spaces_is_named_as_such(tmp_path: Path) -> None:
    # Pasted from a terminal or a PDF: renaming 'ticker weight' to 'ticker' would not help.
    path = _csv(tmp_path, "ticker weight\nAAPL 0.6\nMSFT 0.4\n")
    with pytest.raises(
        InputError,
        match=r"no column 'ticker' .*; the header 'ticker weight' is one column: the fields are "
        r"separated by spaces; separate them with ',', ';', a tab or '\|'$",
    ):
        load_portfolio(path)
    # A header of several words is still a column to rename (a broker's "Ticker Symbol").
    path = _csv(tmp_path, "Ticker Symbol,weight\nAAPL,0.6\nMSFT,0.4\n")
    with pytest.raises(InputError, match=r"rename the column 'Ticker Symbol' to 'ticker'"):
        load_portfolio(path)


# -- weights ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "expect"),
    [
        (
            [60, 40],
            r"row 0 .*: 60 is more than the whole portfolio and the weights sum to 100; .*they look like percentages: divide the weight column by 100$",
        ),
        (
            [5, 3, 2],
            r"row 0 .*: 5 is more than .* sum to 10; .*if they are percentages, divide the weight column by 100; if they are amounts \(market values\), divide each by their sum \(10\)$",
        ),
        ([50, 50, -50, -50], r"sum to 0 \(gross 200\); .*they look like percentages"),
        ([150_000, 50_000], r"divide each by their sum \(200000\)"),
    ],
    ids=["percent", "percent-of-a-sleeve", "percent-market-neutral", "amounts"],
)
def test_weights_in_percent_or_amounts_are_refused(weights: list[float], expect: str) -> None:
    frame = pd.DataFrame({"ticker": [f"T{i}" for i in range(len(weights))], "weight": weights})
    with pytest.raises(InputError, match=expect):
        load_portfolio(frame)


@pytest.mark.parametrize(
    ("weights", "expect"),
    [
        # 150 equal positions in percent: no weight above 1, but a sum of 100
        ([100 / 150] * 150, r"the weights sum to 100; .*they look like percentages"),
        # a market-neutral book in percent: net 0, gross 100
        ([0.5] * 100 + [-0.5] * 100, r"sum to 0 \(gross 100\); .*they look like percentages"),
    ],
    ids=["percent-all-below-1", "percent-market-neutral-all-below-1"],
)
def test_percent_weights_are_refused_when_none_is_above_one(
    weights: list[float], expect: str
) -> None:
    # Used as fractions, every weight would be 100 times too big; a warning is not enough.
    frame = pd.DataFrame({"ticker": [f"T{i}" for i in range(len(weights))], "weight": weights})
    with pytest.raises(InputError, match=expect):
        load_portfolio(frame)


def test_all_weights_zero_is_refused(tmp_path: Path) -> None:
    # Nothing to weight the scores by (the report's weighted score and charts divide by the gross).
    with pytest.raises(
        InputError,
        match=r"portfolio.csv: every weight in column 'weight' is 0 \(2 positions\); give each "
        r"position its weight",
    ):
        load_portfolio(_csv(tmp_path, "ticker,weight\nAAPL,0\nMSFT,0\n"))
    # One position at 0 among others is a position (a closed one, kept for the record).
    assert len(load_portfolio(pd.DataFrame({"ticker": list("AB"), "weight": [1.0, 0.0]}))) == 2


def test_decimal_comma_percentages_are_refused(tmp_path: Path) -> None:
    # '60,5' is 60.5 (not 0.605): a percentage, refused with the fix rather than rescaled.
    path = _csv(tmp_path, "ticker;weight\nAAPL;60,5\nMSFT;39,5\n")
    with pytest.raises(
        InputError,
        match=r"line 2 \(row 0\), column 'weight': 60.5 is more than the whole portfolio and the weights sum to 100;",
    ):
        load_portfolio(path)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        (
            "ticker,weight\nAAPL,0.6\nMSFT,0.4\nTOTAL,1.0\n",
            r"line 4 \(row 2\), column 'ticker': 'TOTAL' is a total line, not a position; delete that line",
        ),
        (
            "ticker,name,weight\nAAPL,Apple,0.6\nMSFT,Microsoft,0.4\n,Grand total,1\n",
            r"line 4 \(row 2\), column 'name': 'Grand total' is a total line",
        ),
        (
            "ticker;weight\nSum:;1\nAAPL;0,6\nMSFT;0,4\n",
            r"line 2 \(row 0\), column 'ticker': 'Sum:' is a total line.*if 'Sum:' really is a ticker, give it a 'name'",
        ),
        (
            "ticker,weight\nAAPL,0.6\nMSFT,0.3\nXLK,0.1\nALL,1.0\n",
            r"line 5 \(row 3\), column 'weight': 1 is the sum of all the other weights, so this looks like a total line",
        ),
        (
            "ticker,weight\nAAPL,60\nMSFT,40\n,100\n",
            r"line 4 \(row 2\), column 'ticker': the key is empty and the weight 100 is the sum of all the other weights, so this looks like a total line",
        ),
    ],
    ids=["TOTAL-key", "name-grand-total", "sum-first", "unnamed-by-value", "percent-total-no-key"],
)
def test_total_lines_are_refused_by_line(tmp_path: Path, text: str, expect: str) -> None:
    with pytest.raises(InputError, match=expect):
        load_portfolio(_csv(tmp_path, text))


def test_a_ticker_named_sum_with_a_name_is_a_position() -> None:
    frame = pd.DataFrame(
        {"ticker": ["SUM", "AAPL"], "name": ["Summit Materials", "Apple"], "weight": [0.5, 0.5]}
    )
    assert load_portfolio(frame)["ticker"].tolist() == ["SUM", "AAPL"]
    # A last weight that is the sum of the others, in a portfolio summing to 1, is a position.
    assert (
        len(load_portfolio(pd.DataFrame({"ticker": ["A", "B", "C"], "weight": [0.25, 0.25, 0.5]})))
        == 3
    )
    # Not quite the sum of the others (0.85 vs 0.9): a position, and only the sum is suspicious.
    frame = pd.DataFrame({"ticker": list("ABCD"), "weight": [0.5, 0.3, 0.1, 0.85]})
    with pytest.warns(UserWarning, match=r"the weights sum to 1.75, not 1"):
        assert len(load_portfolio(frame)) == 4


def test_sum_far_from_one_is_a_warning_naming_the_sum() -> None:
    frame = pd.DataFrame({"ticker": ["A", "B"], "weight": [0.5, 0.3]})
    with pytest.warns(
        UserWarning,
        match=r"^the DataFrame: the weights sum to 0.8, not 1; each weight is used as given",
    ):
        portfolio = load_portfolio(frame)
    assert portfolio["weight"].tolist() == [0.5, 0.3]  # not rescaled
    # within 0.98..1.02 (rounding, a cash residual): silent (warnings are errors in this suite)
    load_portfolio(pd.DataFrame({"ticker": ["A", "B"], "weight": [0.6, 0.41]}))
    load_portfolio(pd.DataFrame({"ticker": ["A", "B"], "weight": [0.6, 0.385]}))


def test_shorts_are_accepted_and_counted() -> None:
    # 130/30: one long above 1 with its short hedge; net 1, gross 1.6: no percent error, no warning.
    book = load_portfolio(pd.DataFrame({"ticker": ["A", "B"], "weight": [1.3, -0.3]}))
    assert book["weight"].tolist() == [1.3, -0.3]
    assert book.attrs["shorts"] == 1
    assert load_portfolio(pd.DataFrame({"ticker": ["A"], "weight": [1.0]})).attrs["shorts"] == 0
    neutral = pd.DataFrame({"ticker": list("ABCD"), "weight": [0.5, 0.5, -0.5, -0.5]})
    with pytest.warns(
        UserWarning,
        match=r"the weights sum to 0 \(net exposure; gross 2, with 2 short positions\), not 1",
    ):
        assert load_portfolio(neutral).attrs["shorts"] == 2


# -- Excel ------------------------------------------------------------------------------------------


def test_excel_first_sheet(tmp_path: Path) -> None:
    path = tmp_path / "p.xlsx"
    with pd.ExcelWriter(path) as writer:
        pd.DataFrame(
            {"ticker": ["0700", "AAPL"], "name": ["Tencent", "Apple"], "weight": [0.25, 0.75]}
        ).to_excel(writer, sheet_name="Positions", index=False)
        pd.DataFrame({"x": [1]}).to_excel(writer, sheet_name="Notes", index=False)
    portfolio = load_portfolio(path)
    assert portfolio["ticker"].tolist() == ["0700", "AAPL"]
    assert portfolio["weight"].tolist() == [0.25, 0.75]
    # Codes typed as numbers in Excel still come back as text keys, like a CSV's.
    pd.DataFrame({"ticker": [700, 5], "weight": [0.5, 0.5]}).to_excel(path, index=False)
    assert load_portfolio(path)["ticker"].tolist() == ["700", "5"]


def test_excel_errors_name_the_sheet_row(tmp_path: Path) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Positions"
    for row in (["Ticker", "weight"], ["AAPL", 0.6], [None, None], ["MSFT", 0.4], ["Total", 1.0]):
        sheet.append(row)
    book.create_sheet("Other")
    path = tmp_path / "p.xlsx"
    book.save(path)
    with pytest.raises(
        InputError,
        match=r"no column 'ticker' \(first sheet 'Positions' of 2: columns 'Ticker', 'weight'\); rename the column 'Ticker'",
    ):
        load_portfolio(path)
    # Excel rows as Excel numbers them: the header is row 1, the empty row 3 is skipped.
    with pytest.raises(InputError, match=r"p.xlsx row 5, column 'Ticker': 'Total' is a total line"):
        load_portfolio(path, key="Ticker")


def test_excel_title_row_is_named(tmp_path: Path) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    for row in (["Portfolio 2024-06-30"], ["ticker", "weight"], ["AAPL", 1.0]):
        book.active.append(row)
    path = tmp_path / "p.xlsx"
    book.save(path)
    with pytest.raises(
        InputError,
        match=r"the header looks like row 2 \(ticker, weight\): delete the rows above it",
    ):
        load_portfolio(path)


def test_excel_without_openpyxl_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from portfolio_batch import MissingDependencyError

    (tmp_path / "p.xlsx").write_bytes(b"PK")
    for name in [m for m in sys.modules if m == "openpyxl" or m.startswith("openpyxl.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "openpyxl", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'portfolio_batch\[excel\]'"):
        load_portfolio(tmp_path / "p.xlsx")


def test_not_an_excel_file(tmp_path: Path) -> None:
    (tmp_path / "p.xlsx").write_text("ticker,weight\nA,1\n")
    with pytest.raises(InputError, match=r"p.xlsx: not a readable Excel workbook"):
        load_portfolio(tmp_path / "p.xlsx")


def test_thousands_points_do_not_hide_decimal_commas(tmp_path: Path) -> None:
    # '1.234' (a thousand shares, or 1.234) is no evidence of decimal points; '0,5' decides.
    path = _csv(tmp_path, "ticker;weight;shares\nAAPL;0,5;1.234\nMSFT;0,5;20\n")
    assert load_portfolio(path)["weight"].tolist() == [0.5, 0.5]
