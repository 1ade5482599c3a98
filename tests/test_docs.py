"""Docs generated from code stay in step with it; every command has help with an example."""

from __future__ import annotations

import re
from pathlib import Path

from weightvault import _docs
from weightvault.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def test_every_command_has_help_with_an_example():
    missing = []
    for line, p in _docs.iter_commands(build_parser()):
        text = _docs._help(p)
        if "example:" not in text or not p.description:
            missing.append(line)
    assert missing == []


def test_cli_reference_is_current():
    assert (ROOT / "docs" / "cli.md").read_text() == _docs.cli_markdown() + "\n", \
        "docs/cli.md is stale: run python -m weightvault._docs"


def test_catalog_reference_is_current():
    assert (ROOT / "docs" / "catalog.md").read_text() == _docs.catalog_markdown(), \
        "docs/catalog.md is stale: run python -m weightvault._docs"


def test_readme_commands_exist():
    """Every `weightvault X` the README shows is a real command."""
    names = {line.split()[1] for line, _ in _docs.iter_commands(build_parser()) if len(line.split()) > 1}
    readme = (ROOT / "README.md").read_text()
    used = set(re.findall(r"^weightvault (?:--\S+ \S+ )?([a-z][a-z-]+)", readme, flags=re.M))
    assert used and used <= names, used - names


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = next(line for line in readme.splitlines() if "python -m pytest" in line)
    assert cmd.strip() in ci
