"""The README's local-server example runs and prints what it says."""

from __future__ import annotations

import re

from tests import readme


def test_readme_local_server_example_runs() -> None:
    (block,) = readme.python_blocks(readme.section("local-server"))
    expected = re.search(r"# (completed \w+ \d+)", block)
    assert expected
    assert readme.run_block(block) == [expected.group(1)]
