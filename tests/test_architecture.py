"""The house's shape, checked: no import circles, each step kind and backend registered once, small modules.

Read from the source with `ast` (nothing is imported), so a circle introduced anywhere in synth/
fails here even when Python would tolerate it at import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

SYNTH = Path(__file__).resolve().parent.parent / "synth"
MAX_LINES = 420


def _module_name(path: Path) -> str:
    parts = path.relative_to(SYNTH.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SYNTH.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """synth modules this file imports anywhere (functions too), except under `if TYPE_CHECKING:`."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in modules:
                    found.add(sub)
                elif node.module in modules:
                    found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_cycle_finder_finds_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circles() -> None:
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph) or [])}"


def test_modules_stay_small() -> None:
    big = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_each_step_kind_and_backend_is_registered_once() -> None:
    from synth.backends import BACKENDS
    from synth.steps import STEP_KINDS

    assert sorted(STEP_KINDS) == ["filter", "generate", "map", "mine_negatives", "similarity"]
    for key, kind in STEP_KINDS.items():
        assert kind.key == key  # one name per kind: YAML key, class attribute, report kind
    assert {"vllm", "openai", "dry-run"} <= set(BACKENDS)
    source = "\n".join(p.read_text(encoding="utf-8") for p in SYNTH.rglob("*.py"))
    for key in STEP_KINDS:
        assert source.count(f'key = "{key}"') == 1, f"step kind {key!r} declared more than once"
    # No per-kind dispatch outside the registry: the runner never names a step class.
    runner = (SYNTH / "runner.py").read_text(encoding="utf-8")
    for kind in STEP_KINDS.values():
        assert kind.__name__ not in runner
