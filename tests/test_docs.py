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


def test_docs_generator_has_a_check_mode_that_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_docs, "DOCS", tmp_path)
    assert _docs.main(["--check"]) == 1 and not list(tmp_path.iterdir())  # missing: stale, nothing written
    assert _docs.main([]) == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["catalog.md", "cli.md"]
    assert _docs.main(["--check"]) == 0
    (tmp_path / "catalog.md").write_text("old")
    assert _docs.main(["--check"]) == 1 and (tmp_path / "catalog.md").read_text() == "old"


def test_catalog_reference_lists_the_table_macros():
    text = (ROOT / "docs" / "catalog.md").read_text()
    for sig in ("ancestors(of_model, of_version)", "descendants(of_model, of_version)",
                "students_of(of_model, of_version)", "trained_on(of_dataset, of_version)"):
        assert f"## table macro `{sig}`" in text, sig
