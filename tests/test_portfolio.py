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
    with pytest.raises(
        InputError, match=r"no 'ticker' column.*columns are \['symbol', 'weight'\].*key="
    ):
        load_portfolio(path)


def test_missing_weight_suggests_the_near_name(tmp_path: Path) -> None:
    path = _csv(tmp_path, "ticker,Weight\nAAPL,1\n")
    with pytest.raises(InputError, match=r"no 'weight' column \(found 'Weight': rename it\)"):
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
    with pytest.raises(
        InputError, match=r"looks like percentages.*divide the weight column by 100"
    ):
        load_portfolio(pd.DataFrame({"ticker": ["A", "B"], "weight": [60, 40]}))
    with pytest.raises(InputError, match=r"row 1 .*'volatility': 35 looks like a percentage"):
        load_portfolio(
            pd.DataFrame({"ticker": ["A", "B"], "weight": [0.5, 0.5], "volatility": [0.2, 35]})
        )


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_portfolio(tmp_path / "missing.csv")
    (tmp_path / "p.xlsx").write_text("x")
    with pytest.raises(InputError, match=r"unknown file type '.xlsx'"):
        load_portfolio(tmp_path / "p.xlsx")
    with pytest.raises(InputError, match="takes a CSV/Parquet path or a DataFrame"):
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
