"""Shared fixtures: every test gets its own home and no real credentials; servers are real
uvicorn servers on 127.0.0.1, spoken to by the real ``openai`` SDK."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTDATA = ROOT / "testdata"

# Set by .ci/run: the browser and SmolLM2 tests fail instead of skipping when their tools are missing.
_REQUIRE_VARS = ("PB_REQUIRE_BROWSER", "PB_REQUIRE_LLM")

_CREDENTIAL_VARS = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_ENDPOINT",
    "OPENAI_API_VERSION",
    "PORTFOLIO_BATCH_ENGINE",
    # other providers' keys: with one alone set, client() picks that provider
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
    # OpenAI-compatible providers (_providers/compatible.py): only provider= selects them
    "GROQ_API_KEY",
    "GROQ_BASE_URL",
    "TOGETHER_API_KEY",
    "TOGETHER_BASE_URL",
    "MISTRAL_API_KEY",
    "MISTRAL_BASE_URL",
    "FIREWORKS_API_KEY",
    "FIREWORKS_BASE_URL",
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fresh PORTFOLIO_BATCH_HOME per test and no way to reach a real API."""
    monkeypatch.setenv("PORTFOLIO_BATCH_HOME", str(tmp_path / "pb-home"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for var in _CREDENTIAL_VARS:
        monkeypatch.delenv(var, raising=False)
    # The CLI, run in-process by some tests, points the library's logger at its own stderr
    # console and stops propagation; later tests must start from the library's defaults.
    logger = logging.getLogger("portfolio_batch")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


@pytest.fixture
def local_server(tmp_path: Path) -> Iterator[Any]:
    """A local Files + Batches server (rules engine) on a random loopback port."""
    from portfolio_batch.local import serve

    # any_key: tests build their own clients (other transports, child processes) with any key;
    # the key a server requires by default is tested in tests/test_local_security.py
    with serve(engine="rules", data_dir=tmp_path / "server-data", any_key=True) as server:
        yield server


@pytest.fixture
def openai_client(local_server: Any) -> Any:
    """The real ``openai.OpenAI`` client pointed at ``local_server``."""
    return local_server.client()


@pytest.fixture
def testdata() -> Path:
    return TESTDATA


def pytest_report_header(config: pytest.Config) -> str:
    required = " ".join(f"{var}={os.environ.get(var, '')}" for var in _REQUIRE_VARS)
    return f"portfolio_batch tests; PORTFOLIO_BATCH_HOME per test; {required}"
