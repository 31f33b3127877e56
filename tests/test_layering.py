"""The pipeline's import direction (DESIGN.md): the import-linter contract in pyproject.toml,
no import cycles between harness's packages, and no `_private` name imported across them."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

if not os.environ.get("GDN_REQUIRE_DEV_TOOLS"):     # scripts/test.sh sets it: a skip there would hide the check
    pytest.importorskip("grimp", reason="the dev extra's grimp / import-linter are not installed here")
import grimp  # after the skip decision

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "harness"


def test_import_linter_contract_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists() and not os.environ.get("GDN_REQUIRE_DEV_TOOLS"):
        pytest.skip("the dev extra's import-linter is not installed here")
    r = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def _package(module: str) -> str:
    """harness.a.b -> harness.a (top-level modules are their own unit)."""
    return ".".join(module.split(".")[:2])


def test_no_cycles_between_packages():
    graph = grimp.build_graph("harness", cache_dir=None)
    edges = {}
    for m in graph.modules:
        for imported in graph.find_modules_directly_imported_by(m):
            a, b = _package(m), _package(imported)
            if a != b and a != "harness" and b != "harness":
                edges.setdefault(a, set()).add(b)
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"
    for n in sorted(edges):
        if n not in state:
            visit(n, [n])
    assert not cycles, cycles


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _private_imports():
    """(file, line, name) for each `_private` name a harness module imports from another
    package of harness - by `from x import _name` or as `mod._name` on an imported module."""
    found = []
    for path in sorted(HARNESS.rglob("*.py")):
        module = _module_of(path)
        tree = ast.parse(path.read_text())
        aliases = {}      # local name -> harness module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                src = _resolve(module, path.name == "__init__.py", node)
                if not src.startswith("harness"):
                    continue
                for a in node.names:
                    target = f"{src}.{a.name}"
                    if (HARNESS.parent / target.replace(".", "/")).with_suffix(".py").exists() or \
                            (HARNESS.parent / target.replace(".", "/")).is_dir():
                        aliases[a.asname or a.name] = target
                    elif a.name.startswith("_") and not a.name.startswith("__") \
                            and _package(src) != _package(module):
                        found.append((str(path.relative_to(ROOT)), node.lineno, f"{src}.{a.name}"))
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("harness") and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__"):
                target = aliases[node.value.id]
                if _package(target) != _package(module):
                    found.append((str(path.relative_to(ROOT)), node.lineno, f"{target}.{node.attr}"))
    return found


def test_no_private_names_across_packages():
    assert not _private_imports()


def test_private_import_check_sees_one(tmp_path, monkeypatch):
    """The check above is not vacuous: a planted cross-package `_private` import is found."""
    fake = tmp_path / "harness"
    (fake / "a").mkdir(parents=True)
    (fake / "b").mkdir()
    for f in ("__init__.py", "a/__init__.py", "b/__init__.py", "a/x.py"):
        (fake / f).write_text("")
    (fake / "b" / "y.py").write_text("from harness.a.x import _hidden, shown\nfrom harness.a import x\nx._other\n")
    monkeypatch.setattr(sys.modules[__name__], "HARNESS", fake)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert [n for _, _, n in _private_imports()] == ["harness.a.x._hidden", "harness.a.x._other"]


def test_few_top_level_modules():
    """Only the CLI's shared pieces sit at the top; everything else lives in a stage package."""
    assert {p.stem for p in HARNESS.glob("*.py")} <= {"__init__", "config", "errors", "batch"}
