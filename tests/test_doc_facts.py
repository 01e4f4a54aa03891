"""Numbers the README and docs/ state about the code's limits are the code's numbers."""

from __future__ import annotations

import re
from pathlib import Path

from portfolio_batch import _jsonl, _portfolio
from portfolio_batch.local.config import ServerConfig

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
DESIGN = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")


def _number(text: str) -> int:
    return int(text.replace(",", "").replace("_", ""))


def test_readme_states_the_jsonl_chunk_to_jsonl_uses() -> None:
    said = re.findall(r"Serialised ([\d,]+) lines at a time", README)
    assert said == [f"{_jsonl._CHUNK:,}"], said
    # no other line count for the writes survives anywhere in the docs
    for text in (README, DESIGN):
        assert not re.search(r"[\d,]+-line chunks", text)


def test_readme_states_to_jsonl_defaults() -> None:
    import inspect

    params = inspect.signature(_jsonl.to_jsonl).parameters
    sig = re.search(
        r"`to_jsonl\(requests, out_dir, \*, max_requests=([\d_]+), max_bytes=200\*2\*\*20", README
    )
    assert sig is not None
    assert _number(sig.group(1)) == params["max_requests"].default
    assert params["max_bytes"].default == 200 * 2**20


def test_docs_state_the_sniffed_head_and_the_upload_limit() -> None:
    kib = re.search(r"sniffed from its first (\d+) KiB", DESIGN)
    assert kib is not None and int(kib.group(1)) * 1024 == _portfolio._HEAD_BYTES
    assert "at most 200 MiB" in README and ServerConfig().max_upload_bytes == 200 * 2**20
