"""The layout is the architecture: packages by stage, imports flowing one way (docs/architecture.md).

Every `import madcache.X` in the package, at module level or inside a function, is checked
against the allowed stages below, and the module graph must have no cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "madcache"

# stage -> the stages it may import (besides itself)
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "teachers": {"core", "data"},
    "cache": {"core", "data"},
    "extraction": {"core", "data", "teachers", "cache"},
    "students": {"core", "data", "cache"},
    "method": {"core", "data", "cache", "students"},
    "train": {"core", "data", "cache", "students", "method"},
    "evaluation": {"core", "data", "cache", "students", "method", "train"},
    "experiments": {"core", "data", "cache", "students", "method", "train", "evaluation"},
    "demo": {
        "core",
        "data",
        "teachers",
        "cache",
        "extraction",
        "students",
        "method",
        "train",
        "evaluation",
        "experiments",
    },
}
TOP = {"__init__", "__main__", "cli", "commands"}  # the entry points may import anything
VERSION = "madcache"  # `madcache.__version__`, imported by all


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every madcache module `path` imports, at any depth of the code."""
    name = module_name(path)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("madcache")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = (
                    name.split(".")[: -node.level]
                    if path.name != "__init__.py"
                    else name.split(".")[: len(name.split(".")) - node.level + 1]
                )
                base = ".".join(package + ([base] if base else []))
            if base.startswith("madcache"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in imports_of(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_import_follows_the_data_flow():
    wrong = []
    for module, targets in graph().items():
        source = stage(module)
        if source in TOP:
            continue
        assert source in ALLOWED, f"{module}: stage '{source}' is not in the architecture table"
        for target in targets:
            if (
                target != VERSION
                and stage(target) != source
                and stage(target) not in ALLOWED[source]
            ):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the data flow:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    edges = graph()
    # a package's __init__ importing its own modules is not a cycle of the design
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}
    seen: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if seen.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in seen:
                visit(nxt)
        stack.pop()
        seen[node] = 2

    for node in sorted(edges):
        if node not in seen:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_dataset_branches_outside_the_data_package():
    pattern = re.compile(r"""dataset\s*(==|!=|in)\s*\(?["']""")
    found = [
        f"{p.relative_to(PACKAGE.parent)}:{i}"
        for p in PACKAGE.rglob("*.py")
        if stage(module_name(p)) not in {"data", "demo"}
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, (
        "choose behaviour through the dataset spec (madcache/data/base.py):\n" + "\n".join(found)
    )


def test_the_module_map_names_every_module():
    """docs/architecture.md's module map stays the map: each module of a stage is named there."""
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [
        str(p.relative_to(PACKAGE))
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.name != "__init__.py"
        and "commands" not in p.parts
        and not re.search(rf"\b{re.escape(p.stem)}\b", doc)
    ]
    assert not missing, f"not in docs/architecture.md: {missing}"
