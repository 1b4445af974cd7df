"""mkdocs hook: the flag tables of docs/reference/cli.md, read from the source so they never drift from the code.

A page line `<!-- flags: PATH CLASS -->` becomes a table of CLASS's dataclass fields in PATH (flag, type, default,
help); `<!-- cli-flags: PATH -->` becomes one table per argparse parser of PATH. The source is parsed with `ast`,
never imported, so the site builds without torch.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- (flags|cli-flags): (\S+)(?: (\w+))? -->$", re.MULTILINE)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _literal(node: ast.expr | None) -> str:
    if node is None:
        return ""
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return f"`{ast.unparse(node)}`"
    return f"`{value!r}`" if not isinstance(value, str) else f'`"{value}"`'


def _help_text(node: ast.expr) -> str:
    try:
        return str(ast.literal_eval(node))
    except ValueError:
        return ast.unparse(node)


def _module_files(path: str) -> list[Path]:
    """The module PATH (`.py` optional), or every module of the package of that name: a module later split into a
    package keeps its marker."""
    package = ROOT / path.removesuffix(".py")
    if package.is_dir():
        return sorted(package.rglob("*.py"))
    module = package.with_suffix(".py")
    return [module] if module.is_file() else []


def dataclass_table(path: str, class_name: str) -> str:
    classes = [
        node
        for file in _module_files(path)
        for node in ast.parse(file.read_text()).body
        if isinstance(node, ast.ClassDef) and node.name == class_name
    ]
    if not classes:
        raise ValueError(f"docs flag table: no class {class_name} in {path}; fix the marker in docs/reference/cli.md")
    rows = ["| flag | type | default | what |", "| --- | --- | --- | --- |"]
    for stmt in classes[0].body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        default, help_text = stmt.value, ""
        if isinstance(stmt.value, ast.Call) and getattr(stmt.value.func, "id", "") == "field":
            keywords = {k.arg: k.value for k in stmt.value.keywords}
            default = keywords.get("default")
            if default is None and "default_factory" in keywords:
                default = keywords["default_factory"]
            metadata = keywords.get("metadata")
            if isinstance(metadata, ast.Dict):
                for key, value in zip(metadata.keys, metadata.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "help":
                        help_text = _help_text(value)
        kind = ast.unparse(stmt.annotation).replace(" | ", " or ")  # a `|` would split the table's cell
        rows.append(f"| `--{stmt.target.id}` | {_cell(kind)} | {_cell(_literal(default))} | {_cell(help_text)} |")
    return "\n".join(rows)


def argparse_tables(path: str) -> str:
    """One table per parser variable that `add_argument` is called on, in source order."""
    files = _module_files(path)
    if not files:
        raise ValueError(f"docs flag table: no module {path}; fix the marker in docs/reference/cli.md")
    tree = ast.Module(body=[node for file in files for node in ast.parse(file.read_text()).body], type_ignores=[])
    parsers: dict[str, list[str]] = {}
    # `score = commands.add_parser("score", ...)`: the table is headed by the command's name, not the variable's.
    titles = {"common": "every command"}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "attr", "") == "add_parser"
            and isinstance(node.targets[0], ast.Name)
        ):
            titles[node.targets[0].id] = f"bridgetower-gaudi {node.value.args[0].value}"
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"):
            continue
        owner = ast.unparse(node.func.value)
        names = ", ".join(f"`{a.value}`" for a in node.args if isinstance(a, ast.Constant))
        keywords = {k.arg: k.value for k in node.keywords}
        default = _literal(keywords["default"]) if "default" in keywords else ""
        if "choices" in keywords:
            default += f" (one of {_cell(_literal(keywords['choices']))})"
        what = _help_text(keywords["help"]) if "help" in keywords else ""
        if "nargs" in keywords:
            what = f"{what} (nargs {_literal(keywords['nargs'])})".strip()
        parsers.setdefault(owner, []).append(f"| {names} | {_cell(default)} | {_cell(what)} |")
    if not parsers:
        raise ValueError(f"docs flag table: no add_argument call in {path}; fix the marker in docs/reference/cli.md")
    blocks = []
    for owner, rows in parsers.items():
        title = f"**`{titles.get(owner, owner)}`**\n\n" if len(parsers) > 1 else ""
        header = f"{title}| argument | default | what |\n| --- | --- | --- |\n"
        blocks.append(header + "\n".join(rows))
    return "\n\n".join(blocks)


def on_page_markdown(markdown: str, **_) -> str:
    def replace(match: re.Match) -> str:
        kind, path, class_name = match.groups()
        return dataclass_table(path, class_name) if kind == "flags" else argparse_tables(path)

    return MARKER.sub(replace, markdown)
