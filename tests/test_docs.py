"""What a newcomer reads: the README (a front page whose numbers come from committed files, whose
links and figures exist) and each script's --help (true for the script that prints it)."""
import importlib
import json
import re

import pytest

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_readme_is_a_front_page():
    lines = README.splitlines()
    assert len(lines) <= 180, len(lines)
    head = "\n".join(lines[:40])
    assert "pip install -r requirements.txt" in head and "python train.py" in head
    # the test command is the one CI runs
    assert "python -m pytest -q tests" in head
    assert "python -m pytest -q tests" in (ROOT / ".ci" / "run").read_text()
    for name in ("LICENSE", "CHANGELOG.md"):
        assert (ROOT / name).exists() and f"({name})" in README, name


def test_readme_links_and_figures_exist():
    targets = re.findall(r"\]\(([^)#]+)\)", README)
    local = [t for t in targets if not t.startswith("http")]
    assert local, "no local links read"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, missing


def test_sections_the_code_points_to_exist():
    """An error message that sends the user to a README section names one that is there."""
    headings = set(re.findall(r"^#+ (.+)$", README, re.M))
    named = {m for p in ROOT.glob("*.py") for m in re.findall(r"README\.md, '([^']+)'",
                                                              p.read_text())}
    assert named, "no reference read"
    assert named <= headings, named - headings


def test_readme_results_come_from_their_summaries():
    """Each results row's median / min, flip-TTA median and found LRs are those of the files it
    links."""
    rows = [line for line in README.splitlines() if "summary.txt)" in line]
    assert len(rows) >= 2, rows
    for row in rows:
        folder = ROOT / re.search(r"\((docs/results/[^)]+)/summary\.txt\)", row).group(1)
        summary = (folder / "summary.txt").read_text()
        med, low, tta = re.search(r"median ([\d.]+) %, min ([\d.]+) %; flip-TTA median ([\d.]+)",
                                  summary).groups()
        assert f"**{med} / {low}**" in row and f"| {tta} |" in row, (row, summary)
        found = json.loads((folder / "lr_range" / "lr_range.json").read_text())
        assert f"{found['lr_min']:.3g} / {found['lr_max']:.3g}" in row, row


def help_of(name, capsys):
    """A script's --help, its whitespace folded (argparse wraps to the terminal's width)."""
    with pytest.raises(SystemExit):
        importlib.import_module(name).main(["--help"])
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("name", ["train", "lr_range", "triangle", "data", "model"])
def test_help_says_no_empty_default(name, capsys):
    assert "(default: )" not in help_of(name, capsys)


def test_help_is_true_for_the_script_that_prints_it(capsys):
    triangle = help_of("triangle", capsys)
    assert "--out FILE" in triangle and "range test runs first" not in triangle
    sweep = help_of("lr_range", capsys)
    flags = re.split(r" (?=--[a-z])", sweep[sweep.index("options:"):])
    for flag in ("--subset", "--val"):  # the range test never loads the test set
        text = next(f for f in flags if f.startswith(flag + " N"))
        assert "test" not in text.replace("range test", ""), text
