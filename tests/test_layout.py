"""The shape of the house: imports point one way (scripts on top, shared modules below, no circle),
every setting lives in config.py, lines fit a side-by-side diff, functions read in one screen, and
triangle.py draws without the model or the data."""
import ast
import re
from pathlib import Path

from conftest import ROOT

MODULES = sorted(p.stem for p in ROOT.glob("*.py"))
SCRIPTS = {"train", "lr_range", "triangle"}  # entry points; train.py may call the range test
CODE = [*ROOT.glob("*.py"), *ROOT.glob("scripts/*"), *ROOT.glob("tools/*"),
        *ROOT.glob("tests/*.py"), *ROOT.glob("presets/*"), ROOT / ".ci" / "run"]


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
    assert all("train" not in deps for deps in graph.values()), "only scripts, tests import train"
    for m in set(MODULES) - SCRIPTS:  # shared modules never reach up into a script
        assert not reach(m, graph) & SCRIPTS, (m, reach(m, graph) & SCRIPTS)
    assert not reach("triangle", graph) & {"model", "data", "engine"}, reach("triangle", graph)
    assert graph["cli"] == set() and graph["config"] <= {"cli"}
    assert graph["model"] <= {"cli", "config"}
    assert graph["files"] <= {"cli"} and graph["lr_rule"] <= {"cli"}


def test_lines_fit_100_columns_files_and_functions_stay_short():
    for path in CODE:
        lines = path.read_text().splitlines()
        long = [i + 1 for i, line in enumerate(lines) if len(line) > 100]
        assert not long, (path.name, long)
        if path.suffix != ".py":
            continue
        assert len(lines) <= 350, (path.name, len(lines))
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef) and path.parent != ROOT / "tests":
                assert node.end_lineno - node.lineno < 50, (path.name, node.name)


def test_every_default_lives_in_config():
    """No script declares a flag of the run's settings itself: they come from config.Config, so a
    new setting is one line there."""
    import config

    names = {config.flag(f.name) for f in config.fields(config.COMMON, config.STEP, config.TRAIN,
                                                        config.RANGE)}
    for path in [*ROOT.glob("*.py"), *ROOT.glob("scripts/*.py"), *ROOT.glob("tools/*.py")]:
        declared = set(re.findall(r"add_argument\(\s*\"(--[a-z-]+)\"", path.read_text()))
        assert not declared & names, (path.name, declared & names)


def test_committed_results_name_no_machine_paths():
    """A results folder reads the same on any machine: no absolute path of the machine that made
    it (paths relative to the repository root, as the runs were started there)."""
    absolute = re.compile(r"(?<![\w.:/])/(?:[\w.-]+/)+")  # /x/y/..., not 'a / b' or 'http://'
    found = [(str(p.relative_to(ROOT)), m.group()) for p in (ROOT / "docs").rglob("*")
             if p.suffix in (".json", ".log", ".txt", ".md")
             for m in [absolute.search(p.read_text())] if m]
    assert not found, found[:5]
