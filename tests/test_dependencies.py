"""Dependencies declared in pyproject.toml = third-party packages the shipped code imports."""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["bench", "algorithms", "tasks", "reports"]
OWN = {"bench", "algorithms", "tasks", "reports"}
NOT_DECLARED = {
    "vllm"
}  # GPU rollouts: installed beside the harness (docs/rollout.md), never required


def top_level_imports(package: str) -> set[str]:
    names = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - OWN - {"__future__"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> tuple[set[str], set[str]]:
    """(required distributions, optional ones), names normalised, versions dropped."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(specs):
        return {normalise(re.split(r"[<>=!~\[ ;]", s)[0]) for s in specs}

    optional = set().union(*map(names, project["optional-dependencies"].values()))
    return names(project["dependencies"]), optional


def test_every_imported_package_is_declared_and_every_declared_one_imported():
    dists = packages_distributions()  # module -> distributions providing it (mlflow: two)
    modules = {m for p in SHIPPED for m in top_level_imports(p)} - NOT_DECLARED
    required, optional = declared()
    providers = {m: {normalise(d) for d in dists[m]} for m in modules}
    assert [m for m, ds in providers.items() if not ds & (required | optional)] == []
    assert required - set().union(*providers.values()) == set()  # declared, never imported


def test_the_checker_reads_the_imports():
    assert {"torch", "mlflow", "scipy"} <= top_level_imports("bench") | top_level_imports("reports")
