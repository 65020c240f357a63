"""The layout issue 13 asks for, kept: every numbered script short enough to read in one sitting, with a short
``main()``, and no script loaded by its number (importlib) instead of a plain import of a sibling module."""
import ast
import re
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
SCRIPTS = sorted(EXPERIMENTS.glob("[0-9][0-9]_*.py"))
MODULES = sorted(p for p in EXPERIMENTS.glob("*.py") if p not in SCRIPTS and p.name != "__init__.py")
MAX_LINES, MAX_MAIN_LINES = 450, 60


def test_every_script_is_short_with_a_short_main():
    assert len(SCRIPTS) == 9
    too_long = {p.name: n for p in SCRIPTS if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert too_long == {}
    mains = {p.name: [f.end_lineno - f.lineno + 1 for f in ast.parse(p.read_text()).body
                      if isinstance(f, ast.FunctionDef) and f.name == "main"] for p in SCRIPTS}
    assert {name: m for name, m in mains.items() if len(m) != 1 or m[0] > MAX_MAIN_LINES} == {}


def test_no_script_is_imported_by_number_and_every_module_is_used():
    sources = {p.name: p.read_text() for p in SCRIPTS + MODULES}
    by_number = {name for name, src in sources.items() if re.search(r"import_module\(\s*['\"]experiments\.\d\d_", src)}
    assert by_number == set()
    used = {m.stem: [s.name for s in SCRIPTS if re.search(rf"^from experiments import .*\b{m.stem}\b",
                                                           s.read_text(), re.M)] for m in MODULES}
    assert {stem: users for stem, users in used.items() if not users} == {}
    assert len(used["omniglot"]) == 2 and len(used["electricity"]) == 2   # the two shared pipelines
