"""Every private transformers / optimum-habana API we rely on (bridgetower_gaudi/training/private_apis.py) still exists
with the parameters we call it with, and the methods our overrides hook into still call what we need. transformers'
are inspected on the imported code; optimum-habana's are read from its installed source with `ast` (importing it
needs SynapseAI)."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import re
import textwrap
from pathlib import Path

import pytest
from transformers import Trainer

from bridgetower_gaudi.training import trainer as our_trainer
from bridgetower_gaudi.training.private_apis import OPTIMUM_HABANA, TORCH, TRANSFORMERS, PrivateApi


def _label(api: PrivateApi) -> str:
    return f"{api.owner}.{api.name}" if api.owner else f"{api.module}.{api.name}"


def _parameter_names(arguments: ast.arguments) -> list[str]:
    names = [a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]]
    return names[1:] if names and names[0] in ("self", "cls") else names


def _assigned_attributes(tree: ast.AST) -> set[str]:
    """`self.X = ...` anywhere in `tree`, and dataclass fields (`X: type = ...`) at class level."""
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
    if isinstance(tree, ast.ClassDef):
        names |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    return names


def _self_calls(function: ast.AST) -> set[str]:
    return {
        n.func.attr
        for n in ast.walk(function)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "self"
    }  # fmt: skip


def _check(api: PrivateApi, scope: ast.AST, function: ast.AST | None) -> None:
    """`scope`: the class (or module) the API lives in; `function`: its definition, or None if it is not a function
    defined there."""
    if api.parameters is None:
        assert function is not None or api.name in _assigned_attributes(scope), f"{_label(api)} is gone"
        return
    assert isinstance(function, ast.FunctionDef), f"{_label(api)} is gone"
    found = _parameter_names(function.args)
    assert found[: len(api.parameters)] == list(api.parameters), (
        f"{_label(api)} now takes {found}; {api.used_by} calls it with {list(api.parameters)}"
    )
    missing = set(api.calls) - _self_calls(function)
    assert not missing, f"{_label(api)} no longer calls self.{sorted(missing)}: {api.used_by} relies on it"


def _definition(scope: ast.AST, name: str):
    for node in getattr(scope, "body", []):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return node
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node
    return None


@pytest.mark.parametrize("api", TRANSFORMERS + TORCH, ids=_label)
def test_transformers_and_torch_private_api_is_still_there(api):
    module = importlib.import_module(api.module)
    if api.owner is None:
        assert hasattr(module, api.name), f"{_label(api)} is gone: {api.used_by}"
        scope = ast.parse(inspect.getsource(module))
    else:
        owner = getattr(module, api.owner)
        scope = ast.parse(textwrap.dedent(inspect.getsource(owner))).body[0]
    _check(api, scope, _definition(scope, api.name))


def _optimum_habana_source(module: str) -> ast.Module:
    path = importlib.metadata.distribution("optimum-habana").locate_file(module.replace(".", "/") + ".py")
    return ast.parse(path.read_text())


@pytest.mark.parametrize("api", OPTIMUM_HABANA, ids=_label)
def test_optimum_habana_private_api_is_still_there(api):
    tree = _optimum_habana_source(api.module)
    scope = _definition(tree, api.owner) if api.owner else tree
    assert scope is not None, f"{api.module} has no {api.owner}"
    _check(api, scope, _definition(scope, api.name))


def test_the_list_covers_every_private_trainer_method_we_override_or_call():
    """Each `_name` method of Trainer that our trainer classes define, or that our training code (training/*.py,
    device/gaudi.py) calls through super() / Trainer, is on the list (new code relying on another must add it)."""
    listed = {api.name for api in TRANSFORMERS if api.owner == "Trainer"}
    package = Path(our_trainer.__file__).parents[1]
    files = [*sorted((package / "training").glob("*.py")), package / "device" / "gaudi.py"]  # gaudi: not importable
    source = "\n".join(path.read_text() for path in files)
    called = set(re.findall(r"(?:super\(\)|Trainer|self\.trainer)\.(_[a-z][a-z_]*)\(", source))
    ours = [cls for cls in our_trainer.BridgeTowerTrainer.__mro__ if cls.__module__.startswith("bridgetower_gaudi")]
    overridden = {
        name
        for cls in ours
        for name, value in vars(cls).items()
        if name.startswith("_") and not name.startswith("__") and callable(value) and hasattr(Trainer, name)
    }
    assert called and overridden
    assert called | overridden <= listed, sorted((called | overridden) - listed)
