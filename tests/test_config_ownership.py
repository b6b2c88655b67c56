"""Each config group is owned by the package of its name: every key of the group's schema is read in that package
(``conf/sae/`` <-> ``refusal/sae/``), and no other package reads ``cfg.<group>.<key>`` (the tasks may hand whole
nodes on). Generic over every schema registered in Hydra's ConfigStore whose group names a package of refusal/.
A schema defined in another package is owned by that one (the organism's ``model`` schema: refusal/organism/), and a
nested schema shared from another package (``bootstrap``: refusal/behavior/rates.py) is checked there."""
import ast
import dataclasses
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

import refusal.schemas  # noqa: F401  (registers the schemas)

PACKAGE = Path(refusal.schemas.__file__).parent


def _schemas() -> list[tuple[str, type]]:
    """[(group, schema dataclass)] for every registered schema of a group named like a package of refusal/."""
    out = []

    def walk(tree: dict, prefix: str):
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}/")
            elif prefix and isinstance(value.node, DictConfig) and OmegaConf.get_type(value.node) is not dict:
                group = prefix.rstrip("/")
                if (PACKAGE / group.split("/")[0] / "__init__.py").is_file():
                    out.append((group, OmegaConf.get_type(value.node)))
    walk(ConfigStore.instance().repo, "")
    return out


SCHEMAS = _schemas()


def _instantiated(node_type) -> bool:
    return dataclasses.is_dataclass(node_type) and "_target_" in {f.name for f in dataclasses.fields(node_type)}


def owner(schema: type) -> str:
    """The package that defines ``schema`` (refusal.<package>...)."""
    return schema.__module__.split(".")[1]


def _keys(schema: type, prefix: str = "") -> list[tuple[str, bool]]:
    """[(dotted key, is an instantiated _target_ node)] of a schema, nested schemas of its own package included."""
    out = []
    hints = {f.name: f.type for f in dataclasses.fields(schema)}
    for name, hint in hints.items():
        inner = next((a for a in getattr(hint, "__args__", ()) if dataclasses.is_dataclass(a)), hint)
        if _instantiated(inner):
            out.append((prefix + name, True))
        elif dataclasses.is_dataclass(inner) and owner(inner) == owner(schema):
            out += [(prefix + name, False)] + _keys(inner, f"{prefix}{name}.")
        else:
            out.append((prefix + name, False))
    return out


def _names_read(tree: ast.AST, parameters: bool = False) -> tuple[set[str], bool]:
    """(attribute names and string constants a module reads, with ``parameters`` also the parameter names of its
    functions (what ``instantiate`` passes a ``_target_`` node's keys to), whether it calls ``instantiate``); field
    definitions (``name: type = ...`` in a class body) are not reads."""
    names, instantiates = set(), False
    for node in ast.walk(tree):
        if parameters and isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "instantiate":
            instantiates = True
    return names, instantiates


def _modules(root: Path):
    for path in sorted(root.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _is_group(expr: ast.AST, group: str) -> bool:
    """``cfg.<group>`` or ``cfg["<group>"]`` on a config-named variable (cfg, run_cfg, config, ...)."""
    if isinstance(expr, ast.Attribute) and expr.attr == group:
        root = expr.value
    elif isinstance(expr, ast.Subscript) and isinstance(expr.slice, ast.Constant) and expr.slice.value == group:
        root = expr.value
    else:
        return False
    return isinstance(root, ast.Name) and (root.id.endswith("cfg") or root.id.endswith("config"))


def foreign_reads(tree: ast.AST, group: str, keys: set[str]) -> list[str]:
    """``cfg.<group>.<key>``, ``cfg.<group>["key"]``, ``cfg.<group>.get("key")`` and
    ``OmegaConf.select(cfg, "<group>.<key>")``."""
    found = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Attribute) and _is_group(node.value, group):
            key = node.attr
        elif isinstance(node, ast.Subscript) and _is_group(node.value, group) and isinstance(node.slice, ast.Constant):
            key = node.slice.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and _is_group(node.func.value, group) and node.args and isinstance(node.args[0], ast.Constant):
            key = node.args[0].value
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "select" and len(node.args) > 1 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            head, _, rest = node.args[1].value.partition(".")  # OmegaConf.select(cfg, "<group>.<key>")
            key = rest.split(".")[0] if head == group else None
        if key in keys:
            found.append((node.lineno, f"line {node.lineno}: {ast.unparse(node)}"))
    return [text for _, text in sorted(found)]


@pytest.mark.parametrize("group,schema", SCHEMAS, ids=[f"{g}:{s.__name__}" for g, s in SCHEMAS])
def test_every_key_is_read_by_its_package(group, schema):
    names, instantiates = set(), False
    for _, tree in _modules(PACKAGE / owner(schema)):
        n, i = _names_read(tree, parameters=_instantiated(schema))
        names, instantiates = names | n, instantiates or i
    unread = [key for key, target in _keys(schema) if not (key.split(".")[-1] in names or (target and instantiates))]
    assert not unread, f"{group} keys no code of refusal/{owner(schema)}/ reads: {unread}"


@pytest.mark.parametrize("group,schema", SCHEMAS, ids=[f"{g}:{s.__name__}" for g, s in SCHEMAS])
def test_no_other_package_reads_the_group_keys(group, schema):
    package = owner(schema)
    keys = {f.name for f in dataclasses.fields(schema)}
    bad = {}
    for path, tree in _modules(PACKAGE):
        if path.relative_to(PACKAGE).parts[0] != package:
            found = foreign_reads(tree, group.split("/")[-1], keys)
            if found:
                bad[str(path.relative_to(PACKAGE.parent))] = found
    assert not bad, f"{group} keys read outside refusal/{package}/: {bad}"


def test_the_scan_finds_foreign_reads():
    code = ("a = cfg.activations.collect_tasks\nb = cfg.activations['dtype']\nc = cfg.activations.get('dir')\n"
            "d = OmegaConf.select(run, 'activations.positions')\nok = f(cfg.activations)\n")
    found = foreign_reads(ast.parse(code), "activations", {"collect_tasks", "dtype", "dir", "positions"})
    assert [f.split(":")[0] for f in found] == ["line 1", "line 2", "line 3", "line 4"]
    assert SCHEMAS and {"activations", "circuit", "evaluation", "sae", "data", "logger"} <= {g for g, _ in SCHEMAS}
