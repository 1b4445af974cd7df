"""The package's layout rules that a reader relies on."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "bridgetower_gaudi"


def test_no_module_imports_another_modules_private_names():
    """A leading underscore means "this module's own": what another module of ours needs is public, under its own
    name. (Private names of transformers / optimum-habana are listed and checked in training/private_apis.py.)"""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            ours = isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(PACKAGE.name))
            if ours:
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {alias.name}")
    assert not offenders, "\n".join(offenders)
