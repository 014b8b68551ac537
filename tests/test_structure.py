"""The package's imports follow the stage order of docs/internals.md: no cycle, nothing from a later stage."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "headct"
INTERNALS = ROOT / "docs" / "internals.md"
# The one deferred import from a later stage, named in docs/internals.md ("Stages").
ALLOWED_LATE = {("headct", "headct.predict")}


def stage_table(text: str) -> list[tuple[str, list[str]]]:
    """``[(stage, [module prefixes])]`` from the "Stages" table, in order."""
    section = text.split("## Stages", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[1].startswith("`"):
            continue
        rows.append((cells[0], re.findall(r"`(headct(?:\.\w+)*)`", cells[1])))
    return rows


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """headct modules that ``path`` imports anywhere in it (module level or inside functions)."""
    out = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("headct"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith("headct"):
                continue
            for alias in node.names:  # `from headct import atomic` imports the module headct.atomic
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return out


def stage_of(module: str, table: list[tuple[str, list[str]]]) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, stage index)
    for index, (_, prefixes) in enumerate(table):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def import_graph() -> dict[str, set[str]]:
    """Module → the headct modules it imports (less itself and the one allowed deferred import)."""
    found = modules()
    return {name: {t for t in imported(path, set(found)) if t != name and (name, t) not in ALLOWED_LATE}
            for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif child in graph and not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


TABLE = stage_table(INTERNALS.read_text())


def test_the_stage_table_is_read() -> None:
    names = [stage for stage, _ in TABLE]
    assert names[0] == "base" and names[-1] == "cli" and {"io", "data", "decide", "predict"} <= set(names)
    assert names.index("decide") < names.index("training") < names.index("evaluate") < names.index("predict")


def test_every_module_has_a_stage() -> None:
    missing = [name for name in modules() if stage_of(name, TABLE) is None]
    assert not missing, f"add these to the Stages table of docs/internals.md: {missing}"


def test_no_import_cycle() -> None:
    assert find_cycle(import_graph()) is None


def test_no_import_from_a_later_stage() -> None:
    late = []
    for module, targets in import_graph().items():
        for target in targets:
            here, there = stage_of(module, TABLE), stage_of(target, TABLE)
            if here is not None and there is not None and there > here:
                late.append(f"{module} ({TABLE[here][0]}) imports {target} ({TABLE[there][0]})")
    assert not late, "\n".join(sorted(late))


# --- the checker itself ---------------------------------------------------------------------

def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize(("module", "stage"), [("headct.io.dicom", "io"), ("headct.train", "training"),
                                               ("headct.training.state", "training"), ("headct", "base"),
                                               ("headct.atomic", "base"), ("headct.listen", "deploy")])
def test_modules_map_to_their_stage(module: str, stage: str) -> None:
    assert TABLE[stage_of(module, TABLE)][0] == stage


def test_from_imports_resolve_to_modules() -> None:
    source = PACKAGE / "predict.py"
    found = imported(source, set(modules()))
    assert "headct.atomic" in found and "headct.decide" in found and "headct.inference" in found
