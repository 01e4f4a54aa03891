"""Exports: results.csv that Excel reads (no JSON, rounded, a BOM), results.xlsx with a sheet per
section of the report, and the report printed to PDF by headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import sys

import pandas as pd
import pytest
from test_charts import make_frames

from portfolio_batch import _export as export
from portfolio_batch import review
from portfolio_batch._report import report
from portfolio_batch.errors import ExportError, MissingDependencyError


@pytest.fixture
def frames(testdata):
    results, costs = make_frames(testdata)
    results = results.copy()
    results["content"] = '{"risk_score": 1, "drivers": ["beta"]}'  # the raw answer JSON
    results["cost_usd"] = results["cost_usd"] * 17.0085  # 0.00170085 with float noise
    results.loc[results.index[0], "weight"] = 0.1 + 0.2  # 0.30000000000000004
    return results, costs


def test_csv_has_no_json_rounded_numbers_and_a_bom(frames, tmp_path):
    results, _ = frames
    path = export.to_csv(results, tmp_path / "results.csv")
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # Excel reads the file as UTF-8
    text = raw.decode("utf-8-sig")
    assert "{" not in text and "[" not in text  # no JSON blob, no list repr
    assert "0.30000000000000004" not in text and "0.0017008499999999998" not in text
    back = pd.read_csv(path)
    assert back.columns[0] == "custom_id" and "content" not in back.columns
    assert back["drivers"].iloc[0] == "beta; valuation"
    assert back["weight"].iloc[0] == 0.3
    assert back["cost_usd"].iloc[0] == pytest.approx(0.00170085, abs=1e-12)
    assert str(back["cost_usd"].iloc[0]) == "0.00170085"
    assert len(back) == len(results)
    assert results["content"].notna().all()  # the caller's frame is untouched


def test_a_simulated_runs_csv_keeps_its_notice_line(frames, tmp_path):
    results, _ = frames
    results.attrs = {"simulated": True, "engine": "rules", "backend": "local:embedded:rules"}
    path = export.to_csv(results, tmp_path / "results.csv")
    first = path.read_text(encoding="utf-8-sig").splitlines()[0]
    assert first.startswith("# Simulated: answers from the offline local rules engine")
    assert "," not in first and "skiprows=1" in first
    back = pd.read_csv(path, skiprows=1)
    assert back.columns[0] == "custom_id" and len(back) == len(results)


def test_xlsx_has_a_sheet_per_section(frames, tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    results, costs = frames
    before = results.copy()
    previous = results.copy()
    previous.loc[previous["ticker"] == "MSFT", "weight"] = 0.02
    path = export.to_excel(
        results, costs, path=tmp_path / "results.xlsx", portfolio="Core", previous=previous
    )
    book = openpyxl.load_workbook(path)
    assert book.sheetnames == [
        "Summary",
        "Contributions",
        "Changes",
        "Sectors",
        "Concentration",
        "Model vs proxy",
        "Positions",
        "Requests",
        "Errors",
        "Answer checks",
        "Provenance",
    ]
    summary = {r[0]: r[1] for r in book["Summary"].iter_rows(min_row=2, values_only=True)}
    assert summary["portfolio"] == "Core"
    assert summary["disclaimer"] == "LLM opinion, not investment advice."
    high = review.level_shares(results).set_index("risk_level").loc["high", "share"]
    assert summary["share of gross weight: high"] == pytest.approx(high)
    positions = pd.read_excel(path, sheet_name="Positions")
    assert len(positions) == 40 and positions["ticker"].iloc[0] == "ADBE"
    assert positions["drivers"].iloc[0] == "beta; valuation"
    changes = pd.read_excel(path, sheet_name="Changes")
    assert changes["ticker"].tolist() == ["MSFT"] and changes["change"].iloc[0] == "reweighted"
    sheet = book["Positions"]
    col = [c.value for c in sheet[1]].index("weight") + 1
    assert sheet.cell(row=2, column=col).number_format == "0.00%"
    assert sheet.freeze_panes == "A2" and sheet.auto_filter.ref
    pd.testing.assert_frame_equal(results, before)


def test_xlsx_without_openpyxl_says_how_to_install(frames, tmp_path, monkeypatch):
    results, costs = frames
    monkeypatch.setitem(sys.modules, "openpyxl", None)  # import openpyxl now fails
    with pytest.raises(MissingDependencyError, match=r"pip install 'portfolio_batch\[excel\]'"):
        export.to_excel(results, costs, path=tmp_path / "results.xlsx")
    assert not (tmp_path / "results.xlsx").exists()


def _need_chromium() -> None:
    if shutil.which("chromium") is None and shutil.which("google-chrome") is None:
        reason = "no chromium to print the PDF with"
        if os.environ.get("PB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"PB_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


@pytest.mark.slow
def test_pdf_of_the_report(frames, tmp_path):
    _need_chromium()
    results, costs = frames
    html = report(results, costs=costs, path=tmp_path / "out" / "report.html", pdf=True)
    pdf = html.with_suffix(".pdf")
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and len(data) > 20_000
    # A4, several pages: the charts, positions and appendix each start a page
    pages = len(re.findall(rb"/Type\s*/Page(?!s)", data))
    assert pages >= 4  # header and summary, charts, positions and appendix each start a page
    assert sorted(p.name for p in html.parent.iterdir()) == ["report.html", "report.pdf"]


def test_pdf_without_chromium_says_how_to_install_it(tmp_path, monkeypatch):
    page = tmp_path / "r.html"
    page.write_text("<html><body>x</body></html>")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("PORTFOLIO_BATCH_CHROMIUM", raising=False)
    with pytest.raises(MissingDependencyError, match="apt-get install chromium") as info:
        export.to_pdf(page)
    assert "PORTFOLIO_BATCH_CHROMIUM" in str(info.value)
    monkeypatch.setenv("PORTFOLIO_BATCH_CHROMIUM", str(tmp_path / "nope"))
    with pytest.raises(MissingDependencyError, match="is not an executable"):
        export.to_pdf(page)


def test_a_failing_printer_is_an_export_error_and_leaves_no_file(tmp_path, monkeypatch):
    page = tmp_path / "r.html"
    page.write_text("<html><body>x</body></html>")
    fake = tmp_path / "chromium"
    # it even leaves a PDF-looking file behind: the exit code alone says it failed
    fake.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in --print-to-pdf=*) printf "%%PDF-1.4" > "${a#*=}";; esac; done\n'
        "echo 'cannot open display' >&2\nexit 3\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PORTFOLIO_BATCH_CHROMIUM", str(fake))
    with pytest.raises(ExportError, match=r"exit 3\): cannot open display"):
        export.to_pdf(page)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["chromium", "r.html"]
