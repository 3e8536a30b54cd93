"""The shape of the house: imports point one way (scripts on top, shared modules below, no circle), no file or
function grows past what a newcomer reads at once, and triangle.py draws without the model or the data."""
import ast
from pathlib import Path

from conftest import ROOT

MODULES = sorted(p.stem for p in ROOT.glob("*.py"))
SCRIPTS = {"train", "lr_range", "triangle"}  # entry points; train.py may call the range test


def imports(name):
    tree = ast.parse((ROOT / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(MODULES)


def reach(name, graph):
    seen, todo = set(), [name]
    while todo:
        for m in graph[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    return seen


def test_imports_have_no_circle_and_point_down():
    graph = {m: imports(m) for m in MODULES}
    for m in MODULES:
        assert m not in reach(m, graph), f"{m} imports itself through {graph[m]}"
    assert all("train" not in deps for m, deps in graph.items()), "nothing imports train.py except tests and scripts/"
    for m in set(MODULES) - SCRIPTS:  # shared modules never reach up into a script
        assert not reach(m, graph) & SCRIPTS, (m, reach(m, graph) & SCRIPTS)
    assert not reach("triangle", graph) & {"model", "data", "engine"}, reach("triangle", graph)
    assert graph["model"] <= {"cli"} and graph["cli"] == set() and graph["files"] <= {"cli"}


def test_no_file_over_350_lines_no_function_over_60():
    for path in [*ROOT.glob("*.py"), *ROOT.glob("scripts/*.py")]:
        lines = path.read_text().splitlines()
        assert len(lines) <= 350, (path.name, len(lines))
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 60, (path.name, node.name, node.end_lineno - node.lineno + 1)
