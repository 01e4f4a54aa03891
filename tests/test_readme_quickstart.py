"""The README's five-line quickstart runs as written, offline, and gives one row per position."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import readme

ROOT = Path(__file__).resolve().parent.parent


def test_readme_quickstart_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (block,) = readme.python_blocks(readme.section("quickstart"))
    (tmp_path / "testdata").symlink_to(ROOT / "testdata")
    monkeypatch.chdir(tmp_path)  # the example writes out/shards relative to where it runs
    namespace: dict[str, object] = {}
    readme.run_block(block, namespace)
    results = namespace["results"]
    assert len(results) == 40  # type: ignore[arg-type]
    assert set(results["status"]) == {"succeeded"}  # type: ignore[index]
    assert sorted(p.name for p in (tmp_path / "out" / "shards").iterdir()) == [
        "requests-00000.jsonl"
    ]
