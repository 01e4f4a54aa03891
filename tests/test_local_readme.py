"""The README's local-server example runs and prints what it says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_local_server_example_runs() -> None:
    section = re.search(
        r"<!-- section:local-server -->(.*?)<!-- /section:local-server -->",
        README.read_text(),
        re.S,
    )
    assert section, "README.md has no local-server section"
    code = re.search(r"```python\n(.*?)```", section.group(1), re.S)
    assert code
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code.group(1), "README.md", "exec"), {})
    expected = re.search(r"# (completed \w+ \d+)", code.group(1))
    assert expected
    assert printed.getvalue().strip() == expected.group(1)
