"""The repository's layout rules, read from the code: parts import one way (no cycle between
packages), the pure parts import no Ray, files stay small, every model class is at module level
and every module says its part in its first docstring line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "cemiray"
PURE = ("data", "models", "diffusion", "eval")
MAX_LINES = 400


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def part(module: str) -> str:
    """The part of the system a module belongs to: its top-level folder under cemiray/."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else pieces[0]


def imported(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


MODULES = modules()
GRAPH = {name: imported(path) for name, path in MODULES.items()}


def part_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, targets in GRAPH.items():
        src = part(name)
        for target in targets:
            if target.startswith("cemiray.") and target in MODULES:
                dst = part(target)
                if dst != src:
                    edges.setdefault(src, set()).add(dst)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_between_parts() -> None:
    cycle = find_cycle(part_graph())
    assert cycle is None, f"parts import each other in a circle: {' -> '.join(cycle)}"


def test_no_import_cycle_between_modules() -> None:
    edges = {name: {t for t in targets if t in MODULES and t != name}
             for name, targets in GRAPH.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of meaning
    edges = {n: {t for t in ts if not n.startswith(t + ".")} for n, ts in edges.items()}
    cycle = find_cycle(edges)
    assert cycle is None, f"modules import each other in a circle: {' -> '.join(cycle)}"


def test_pure_parts_import_no_ray_and_only_pure_parts() -> None:
    for name, targets in GRAPH.items():
        if part(name) not in PURE:
            continue
        ray = sorted(t for t in targets if t == "ray" or t.startswith("ray."))
        assert not ray, f"{MODULES[name]}: a pure part imports {ray}"
        impure = sorted(t for t in targets if t.startswith("cemiray.") and t in MODULES
                        and part(t) not in (*PURE, "assets"))
        assert not impure, f"{MODULES[name]}: a pure part imports {impure}"


def test_the_finder_sees_a_cycle_and_ray() -> None:
    """The checks above can fail: a planted cycle and a planted Ray import are found."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None
    tree = ast.parse("def f():\n    import ray.data\n")
    assert any(isinstance(n, ast.Import) and n.names[0].name == "ray.data" for n in ast.walk(tree))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_file_is_small_and_says_its_part(name: str) -> None:
    path = MODULES[name]
    text = path.read_text()
    lines = text.count("\n")
    assert lines <= MAX_LINES, f"{path}: {lines} lines (at most {MAX_LINES})"
    doc = ast.get_docstring(ast.parse(text))
    assert doc and doc.strip(), f"{path}: no module docstring"
    first, *rest = doc.splitlines()
    assert first.rstrip().endswith((".", ":")) and (not rest or not rest[0].strip()), (
        f"{path}: the docstring's first line should say what the module is, in one line")


def test_no_class_defined_inside_a_function() -> None:
    found = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found += [f"{path}:{inner.lineno} {inner.name} in {node.name}()"
                          for inner in ast.walk(node) if isinstance(inner, ast.ClassDef)]
    assert not found, "classes defined inside functions:\n" + "\n".join(found)


def readme_layout() -> list[str]:
    text = (ROOT.parent / "README.md").read_text()
    section = text[text.index("## Layout"):]
    return [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")]


def test_readme_layout_lists_every_folder_and_only_real_ones() -> None:
    listed = readme_layout()
    missing = [p for p in listed if not (ROOT.parent / p).exists()]
    assert not missing, f"README's Layout names paths that do not exist: {missing}"
    folders = {f"{p.parent.relative_to(ROOT.parent)}/" for p in ROOT.rglob("__init__.py")
               if "assets" not in p.parent.relative_to(ROOT).parts[1:]}
    unlisted = sorted(folders - set(listed) - {"cemiray/"})
    assert not unlisted, f"README's Layout does not list {unlisted}"
