"""The README's five-line quickstart runs as written, offline, and gives one row per position."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_readme_quickstart_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    section = re.search(
        r"<!-- section:quickstart -->(.*?)<!-- /section:quickstart -->",
        (ROOT / "README.md").read_text(),
        re.S,
    )
    assert section, "README.md has no quickstart section"
    code = re.search(r"```python\n(.*?)```", section.group(1), re.S)
    assert code
    (tmp_path / "testdata").symlink_to(ROOT / "testdata")
    monkeypatch.chdir(tmp_path)  # the example writes out/shards relative to where it runs
    namespace: dict[str, object] = {}
    exec(compile(code.group(1), "README.md", "exec"), namespace)
    results = namespace["results"]
    assert len(results) == 40  # type: ignore[arg-type]
    assert set(results["status"]) == {"succeeded"}  # type: ignore[index]
    assert sorted(p.name for p in (tmp_path / "out" / "shards").iterdir()) == [
        "requests-00000.jsonl"
    ]
