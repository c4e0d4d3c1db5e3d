"""The package keeps the shape the architecture promises: rooms as folders, a thin CLI, short functions."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "datafree"


def test_the_top_level_holds_at_most_six_flat_modules():
    flat = sorted(p.name for p in PKG.glob("*.py"))
    assert len(flat) <= 6, f"move modules into their room's folder: {flat}"


def test_cli_modules_are_thin():
    long = {p.name: n for p in (PKG / "cli").glob("*.py") if (n := len(p.read_text().splitlines())) > 250}
    assert not long, f"CLI modules over 250 lines: {long}"
    for p in (PKG / "cli").glob("*.py"):
        for f in ast.walk(ast.parse(p.read_text())):
            if isinstance(f, ast.FunctionDef):
                assert f.end_lineno - f.lineno + 1 <= 60, f"{p.name}:{f.lineno} {f.name} is over 60 lines"


def test_no_function_in_the_package_is_over_80_lines():
    long = [f"{p.relative_to(PKG)}:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1})"
            for p in PKG.rglob("*.py") for f in ast.walk(ast.parse(p.read_text()))
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.end_lineno - f.lineno + 1 > 80]
    assert not long, long


def test_type_ignores_stay_few():
    n = sum(p.read_text().count("type: ignore") for p in PKG.rglob("*.py"))
    assert n <= 20, f"{n} `type: ignore` comments (at most 20)"
