"""The layer rule: core → blocks → tasks → flows → app; no module imports a layer above it.

Every import statement of every module is read (module level and inside functions), so
a lazy import that climbs a layer fails too. One import root: nothing installs `tasks`,
`flows` or `blocks` as top-level names.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Where each subpackage's modules live in the checkout (pyproject's package-dir).
FOLDERS = {
    "helixflow.app": REPO / "helixflow" / "app",
    "helixflow.blocks": REPO / "blocks",
    "helixflow.tasks": REPO / "tasks",
    "helixflow.flows": REPO / "flows",
}
RANK = {"core": 0, "blocks": 1, "tasks": 2, "flows": 3, "app": 4}


def layer(module: str) -> str | None:
    """The layer of a helixflow module name; None for anything else."""
    if module == "helixflow.__main__":
        return "app"
    parts = module.split(".")
    if parts[0] != "helixflow":
        return None
    if len(parts) > 1 and parts[1] in ("app", "blocks", "tasks", "flows"):
        return parts[1]
    return "core"


def imported(source: str, module: str) -> set[str]:
    """Every module name an import statement in `source` names (relative ones resolved)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.rsplit(".", node.level)[0]
                base = f"{package}.{base}" if base else package
            names.add(base)
            # `from helixflow import tasks` imports the subpackage itself
            names.update(f"{base}.{alias.name}" for alias in node.names
                         if layer(f"{base}.{alias.name}") not in (None, "core"))
    return names


def violations(source: str, module: str) -> list[str]:
    """`module -> imported` for each import of a higher layer than `module`'s."""
    own = RANK[layer(module) or "core"]
    return [f"{module} ({layer(module)}) -> {name} ({layer(name)})"
            for name in sorted(imported(source, module))
            if layer(name) is not None and RANK[layer(name) or "core"] > own]


def modules() -> dict[str, Path]:
    """Every helixflow module of the checkout by its import name."""
    found = {f"helixflow.{p.stem}": p for p in (REPO / "helixflow").glob("*.py")}
    for package, folder in FOLDERS.items():
        found.update({f"{package}.{p.stem}": p for p in folder.glob("*.py")})
    return {name.removesuffix(".__init__"): path for name, path in found.items()}


def test_no_module_imports_a_higher_layer() -> None:
    found = modules()
    assert len(found) > 60 and "helixflow.tasks.qc" in found and "helixflow.store" in found
    wrong = [v for name, path in sorted(found.items())
             for v in violations(path.read_text(), name)]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("module", "source", "bad"), [
    ("helixflow.store", "from helixflow.tasks.qc import filter_batch", True),
    ("helixflow.store", "def f():\n    import helixflow.flows.pipeline", True),
    ("helixflow.tasks.qc", "from helixflow import flows", True),
    ("helixflow.flows.pipeline", "from ..app import cli", True),
    ("helixflow.blocks.store", "from helixflow.tasks import qc", True),
    ("helixflow.tasks.qc", "from helixflow.blocks.gromacs import GromacsSettings", False),
    ("helixflow.app.cli", "from helixflow.flows import pipeline", False),
    ("helixflow.flows.embed", "from .preprocess import x\nimport numpy", False),
])
def test_the_rule_catches_an_upward_import(module: str, source: str, bad: bool) -> None:
    assert bool(violations(source, module)) is bad


@pytest.mark.parametrize("name", ["tasks", "flows", "blocks", "deployments"])
def test_only_helixflow_is_installed(name: str, tmp_path: Path) -> None:
    """Outside the checkout, the generic names are not importable; helixflow's are."""
    script = (f"import importlib.util as u; assert u.find_spec({name!r}) is None; "
              f"import helixflow.tasks.qc, helixflow.flows.pipeline, helixflow.blocks.store")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_wheel_holds_one_import_root(tmp_path: Path) -> None:
    """A built wheel installs `helixflow` only, with the stage folders inside it, and its
    stages import from it (not from the checkout)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("helixflow", "tasks", "flows", "blocks"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("helixflow-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path / "site")
    assert {n.split("/")[0] for n in names} == {"helixflow", wheel.name.split("-py3")[0]
                                               + ".dist-info"}
    assert {"helixflow/tasks/qc.py", "helixflow/flows/pipeline.py", "helixflow/blocks/store.py",
            "helixflow/app/cli.py"} <= set(names)
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import helixflow.tasks.qc as m; "
              "print(m.__file__)")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "site")], cwd=tmp_path,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.strip() == str(tmp_path / "site" / "helixflow" / "tasks" / "qc.py")
