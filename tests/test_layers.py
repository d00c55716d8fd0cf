"""The layers, enforced on the import statements of every file (module-level and inside
functions): algorithms import only torch and the core; tasks import the core and libraries;
reports never import the engine's loop or the application; the core imports no other layer;
only the application (bench.app) imports reports."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ("bench.",)  # any bench module outside the core
APP = ("bench.app",)


def imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p.rstrip(".") or name.startswith(p.rstrip(".") + ".") for p in prefixes)


def violations(package: str, allowed, forbidden=()) -> list[str]:
    bad = []
    for path in files(package):
        for name in imports(path):
            top = name.split(".")[0]
            ok = under(name, allowed) or top in sys.stdlib_module_names or top == "__future__"
            if forbidden:
                ok = not under(name, forbidden)
            if not ok:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


def test_algorithms_import_only_torch_and_the_core():
    assert violations("algorithms", ("torch", "algorithms", "bench.core")) == []


def test_tasks_import_only_the_core_of_bench():
    forbidden = ("algorithms", "reports", "bench.app", *_engine_modules())
    assert violations("tasks", (), forbidden) == []


def test_reports_never_import_the_engine_loop_or_the_application():
    forbidden = ("algorithms", "tasks", "bench.app", "bench.loop", "bench.update", "bench.rollout")
    assert violations("reports", (), forbidden) == []


def test_the_core_imports_no_other_layer():
    forbidden = ("algorithms", "tasks", "reports", *_engine_modules())
    assert violations("bench/core", (), forbidden) == []


def test_only_the_application_imports_reports():
    engine = [p for p in files("bench") if "app" not in p.relative_to(ROOT / "bench").parts]
    bad = [
        f"{p.relative_to(ROOT)}: {n}" for p in engine for n in imports(p) if under(n, ("reports",))
    ]
    assert bad == []


def _engine_modules() -> tuple[str, ...]:
    """bench.<module> for every bench module and package except the core."""
    names = [p.stem for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__"]
    return tuple(f"bench.{n}" for n in names) + ("bench.app",)


def test_the_checker_sees_imports_at_module_level_and_in_functions(tmp_path):
    """Not vacuous: a file with a forbidden import inside a function is caught."""
    f = tmp_path / "x.py"
    f.write_text("import torch\n\ndef g():\n    from bench.loop import train\n")
    assert imports(f) == {"torch", "bench.loop"}
    assert "bench.core.batch" in imports(ROOT / "algorithms" / "gvpo.py")
