"""The README's CLI section is checked against ``--help``: every command is documented under its
exact usage line, every option it accepts is mentioned there, and no documented option is stale."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from portfolio_batch.cli._app import app
from tests import readme

COMMANDS = [
    ["analyze-risk"],
    ["estimate"],
    ["report"],
    ["jobs", "list"],
    ["jobs", "show"],
    ["jobs", "resume"],
    ["jobs", "results"],
    ["jobs", "cancel"],
    ["serve"],
]
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _help(command: list[str]) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def _readme_blocks() -> dict[str, str]:
    """``### `portfolio-batch …` `` heading (the usage line) -> the text under it."""
    parts = re.split(r"^### `(portfolio-batch [^`]+)`\s*$", readme.section("cli"), flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_readme_documents_the_command_as_help_shows_it(command: list[str]) -> None:
    help_text = _help(command)
    usage = re.search(r"Usage: (portfolio-batch .+?)\s*$", help_text, re.M)
    assert usage
    blocks = _readme_blocks()
    assert usage.group(1) in blocks, f"README cli section has no heading `{usage.group(1)}`"
    block = blocks[usage.group(1)]
    accepted = set(_FLAG.findall(help_text)) - {"--help"}
    documented = set(_FLAG.findall(block))
    assert accepted - documented == set(), "options missing from the README"
    assert documented - accepted == set(), "README documents options the command does not have"


def test_readme_lists_every_command() -> None:
    top = _help([]) + _help(["jobs"])
    names = set(re.findall(r"│ ([a-z][a-z-]+) {2,}", top))
    documented = {" ".join(h.split()[1:3]).replace(" [OPTIONS]", "") for h in _readme_blocks()}
    for name in names - {"jobs"}:
        assert any(d.split()[-1] == name for d in documented), f"`{name}` is not in the README"
    assert len(_readme_blocks()) == len(COMMANDS)


def test_readme_examples_parse() -> None:
    """The command lines in the section's code block use real commands and options."""
    code = re.search(r"```bash\n(.*?)```", readme.section("cli"), re.S)
    assert code
    for line in code.group(1).splitlines():
        words = line.split()
        assert words[0] == "portfolio-batch"
        command = [w for w in words[1:3] if not w.startswith("-") and "/" not in w and "." not in w]
        flags = set(_FLAG.findall(line))
        assert flags <= set(_FLAG.findall(_help(command))), line
