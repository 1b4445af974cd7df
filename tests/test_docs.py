"""The README and the documentation site: what CI runs is what the README says, and the generated flag tables list
every flag the code accepts."""

import dataclasses
import importlib.util
import os
import re

from bridgetower_gaudi.data import DataArguments
from bridgetower_gaudi.training.arguments import ModelArguments, PretrainingArguments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def _flag_tables():
    """docs/hooks/flag_tables.py, the mkdocs hook that writes the flag tables (not a package module)."""
    spec = importlib.util.spec_from_file_location("flag_tables", os.path.join(ROOT, "docs", "hooks", "flag_tables.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ci_runs_the_readmes_quick_start_commands():
    readme, ci = _read("README.md"), _read(".ci", "run")
    for command in ("bash run_scripts/setup.sh --test", ".venv/bin/python -m pytest -q"):
        assert command in readme, command
        assert re.search(rf"^{re.escape(command)}$", ci, re.MULTILINE), command
    assert "mkdocs build --strict" in ci


def test_readme_is_a_landing_page():
    lines = _read("README.md").splitlines()
    assert len(lines) < 250, len(lines)


def test_flag_tables_list_every_dataclass_field():
    flag_tables = _flag_tables()
    cases = [
        ("bridgetower_gaudi/training/arguments.py", ModelArguments),
        ("bridgetower_gaudi/training/arguments.py", PretrainingArguments),
        ("bridgetower_gaudi/data/builder.py", DataArguments),
    ]
    for path, cls in cases:
        table = flag_tables.dataclass_table(path, cls.__name__)
        own = {f.name for f in dataclasses.fields(cls)} - {
            f.name for base in cls.__bases__ if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)
        }
        listed = set(re.findall(r"^\| `--(\w+)`", table, re.MULTILINE))
        assert listed == own, (cls.__name__, own ^ listed)


def test_site_markdown_generates_from_markers():
    flag_tables = _flag_tables()
    page = flag_tables.on_page_markdown(_read("docs", "reference", "cli.md"))
    assert "<!-- flags:" not in page and "<!-- cli-flags:" not in page
    assert "| `--model_name_or_path` |" in page  # run_pretrain.py's flags
    assert "| `--model`" in page  # the bridgetower-gaudi command's
