"""helixflow: an orchestrated genomics data platform (Prefect 3 + Ray).

One import root. The stage packages `helixflow.tasks`, `helixflow.flows` and
`helixflow.blocks` live in the repository's top-level folders `tasks/`, `flows/` and
`blocks/` (pyproject `package-dir`); a built wheel has them inside this folder. Imported
from a checkout (editable install, `PYTHONPATH`, a git worktree), this package finds them
next to itself, so the code that runs is always the checkout's own.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

STAGE_PACKAGES = ("tasks", "flows", "blocks")


class _CheckoutStages(importlib.abc.MetaPathFinder):
    """Finds `helixflow.<stage>` in the checkout folder next to this package."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders

    def find_spec(self, fullname: str, path: object = None, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        folder = self.folders.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)])


def _install_checkout_finder() -> None:
    here = Path(__file__).resolve().parent
    folders = {f"{__name__}.{name}": here.parent / name for name in STAGE_PACKAGES
               if not (here / name).is_dir() and (here.parent / name / "__init__.py").is_file()}
    if folders and not any(isinstance(f, _CheckoutStages) and f.folders == folders
                           for f in sys.meta_path):
        sys.meta_path.insert(0, _CheckoutStages(folders))


_install_checkout_finder()
