"""The README's examples, read by the tests that run them: each section of README.md sits between
``<!-- section:NAME -->`` markers, and a ``# -> text`` comment after a ``print`` says what it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"


def section(name: str) -> str:
    """The text of README section ``name``; fails the test if the section is missing."""
    found = re.search(
        rf"<!-- section:{name} -->(.*?)<!-- /section:{name} -->", README.read_text("utf-8"), re.S
    )
    assert found, f"README.md has no {name!r} section"
    return found.group(1)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def expected_output(block: str) -> list[str]:
    """The lines a block says it prints, from its ``# -> ...`` comments."""
    return re.findall(r"^# -> (.*)$", block, flags=re.M)


def run_block(block: str, namespace: dict[str, Any] | None = None) -> list[str]:
    """Execute a README block as written and return the lines it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block, "README.md", "exec"), {} if namespace is None else namespace)
    return printed.getvalue().splitlines()
