"""Every Prefect task belongs to a pipeline stage, and the plan follows the parameters."""

from __future__ import annotations

import importlib
import pkgutil

from prefect import Task

import helixflow.flows
import helixflow.tasks
from helixflow.flows.stages import STAGES, planned_stages, stage_of


def _all_tasks() -> list[Task]:
    found = []
    for package in (helixflow.tasks, helixflow.flows):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            found += [v for v in vars(module).values()
                      if isinstance(v, Task) and v.fn.__module__ == module.__name__]
    return found


def test_every_task_has_a_stage() -> None:
    tasks = _all_tasks()
    assert len(tasks) >= 30
    staged = {fn for fns in STAGES.values() for fn in fns}
    unstaged = sorted(t.fn.__name__ for t in tasks if t.fn.__name__ not in staged)
    assert not unstaged, f"add these tasks to flows.stages.STAGES: {unstaged}"
    stale = staged - {t.fn.__name__ for t in tasks}
    assert not stale, f"STAGES names tasks that no longer exist: {sorted(stale)}"


def test_stage_of_reads_the_task_key() -> None:
    tasks = {t.fn.__name__: t for t in _all_tasks()}
    assert stage_of(tasks["filter_reads"].task_key) == "qc"
    assert stage_of(tasks["merge_alignments"].task_key) == "align"
    assert stage_of("something_else-0123abcd") == "something_else"


def test_planned_stages_follow_the_parameters() -> None:
    everything = planned_stages({"reference": "r.fa", "assemble": True})
    assert everything == list(STAGES)
    bare = planned_stages({"embed_methods": [], "simulate": True})
    assert bare == ["inputs", "ingest", "qc", "dedup", "correct", "align", "report"]
    no_sim = planned_stages({"embed_methods": ["kmer"], "simulate": False})
    assert "embed" in no_sim and "analysis" not in no_sim and "md" not in no_sim
