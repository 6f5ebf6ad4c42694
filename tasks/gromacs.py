"""From representative sequences to GROMACS simulations of peptides in water: the tasks.

`prepare_md` turns a method's representatives into peptides (`tasks.peptides`) and their
simulation jobs (`tasks.gromacs_job`) with staged inputs; `md_trajectory` turns a finished
job's outputs into the AMBER NetCDF trajectory (`tasks.gromacs_outputs`) with its sanity
checks (`tasks.md_checks`). The jobs run in the Slurm sub-flow or `tasks.gromacs_local`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import task
from pydantic import BaseModel

from helixflow.artifacts import Artifact
from helixflow.blocks.gromacs import GromacsSettings
from helixflow.caching import stage_options
from helixflow.store import Store
from helixflow.tables import publish_file
from helixflow.tasks.gromacs_job import WHOLE_TRAJECTORY, md_job
from helixflow.tasks.gromacs_outputs import md_outputs_to_netcdf
from helixflow.tasks.md_checks import MdChecks, check_simulation
from helixflow.tasks.peptides import peptides_from_orfs

GROMACS_VERSION = "2"  # 2: md-whole.xtc, em/nvt logs kept, MD checks


class MdPlan(BaseModel):
    """One simulation, ready to submit: its peptide and its staged input artifacts."""

    name: str
    sequence_id: str
    cluster: int
    peptide: str
    inputs: dict[str, Artifact]
    commands: list[list[str]]
    outputs: list[str]


def _peptides(reps: list[dict[str, object]], min_len: int, max_len: int) -> dict[str, str]:
    """Peptide of the longest stop-to-stop ORF of each representative read (six frames)."""
    from helixflow.tasks.orfs import OrfParams, find_orfs

    pairs = [(str(r["sequence_id"]), str(r["sequence"])) for r in reps if r.get("sequence")]
    if not pairs:
        return {}
    orfs = find_orfs(pairs, OrfParams(min_length_nt=3 * (min_len + 1), start_codons=(),
                                      partial=True))
    return peptides_from_orfs(orfs, min_len=min_len, max_len=max_len)


@task(name="prepare-md", task_run_name="prepare-md-{method}", **stage_options(GROMACS_VERSION))
def prepare_md(
    method: str, representatives: Artifact, settings: GromacsSettings, max_jobs: int,
    peptide_min: int, peptide_max: int, check_installed: bool, store: Store, run_id: str,
) -> tuple[list[MdPlan], Artifact | None]:
    """Peptides of the largest clusters' representatives → per-simulation input files
    (structure, .mdp's) and one NetCDF of the batch's inputs (embeddings, sequences,
    cluster ids, MD parameters, provenance), all published before submission.

    Representatives are taken by cluster size, largest first; those without a peptide of
    `peptide_min` residues are passed over.

    Args:
        method: the embedding method; names the NetCDF and the task run.
        representatives: the `analyze_embeddings` representatives table (with vectors).
        settings: GROMACS settings.
        max_jobs: the most simulations to plan.
        peptide_min: fewest residues of a peptide.
        peptide_max: most residues of a peptide (longer ones are cut).
        check_installed: check here that GROMACS and the force field are installed (set
            when the jobs run on this host).
        store: the artifact store to read from and publish to.
        run_id: the run the published artifacts belong to.

    Returns:
        (one MdPlan per simulation, the md-inputs NetCDF artifact); ([], None) when no
        representative yields a peptide.
    """
    from helixflow.lineage import code_version
    from helixflow.tables import parquet_file
    from helixflow.tasks.netcdf import write_md_inputs

    with parquet_file(store, representatives) as pf:
        reps = sorted(pf.read().to_pylist(), key=lambda r: -int(r["size"]))
    peptides = _peptides(reps, peptide_min, peptide_max)
    chosen = [r for r in reps if r["sequence_id"] in peptides][:max_jobs]
    if not chosen:
        return [], None
    if check_installed:  # jobs run here: the force field must exist here
        settings.check_installed()
    up = [representatives.ref()]
    plans: list[MdPlan] = []
    with store.scratch() as scratch:
        nc = write_md_inputs(
            scratch / f"{method}.md-inputs.nc",
            sequence_ids=[str(r["sequence_id"]) for r in chosen],
            sequences=[peptides[str(r["sequence_id"])] for r in chosen],
            embeddings=np.array([r["vector"] for r in chosen], dtype=np.float32),
            cluster_ids=[int(r["cluster"]) for r in chosen],
            md_params=settings.md_parameters(),
            provenance={"run_id": run_id, "method": method,
                        "representatives": representatives.uri, **{
                            f"code_{k}": v or "" for k, v in code_version().items()}},
        )
        inputs_nc = publish_file(store, nc, run_id=run_id, stage="md-inputs",
                                 media_type="application/x-netcdf", producer="prepare-md",
                                 rows=len(chosen), upstream=up,
                                 params=settings.md_parameters())
        for i, rep in enumerate(chosen):
            name = f"md-c{int(rep['cluster'])}-{i}"
            job = md_job(settings, peptides[str(rep["sequence_id"])], check_installed=False)
            files = job.write_inputs(scratch / name)
            arts = {fname: publish_file(store, path, run_id=run_id, stage=f"md-inputs/{name}",
                                        name=fname, media_type="text/plain",
                                        producer="prepare-md", upstream=[inputs_nc.ref()])
                    for fname, path in files.items()}
            arts["inputs.nc"] = inputs_nc
            plans.append(MdPlan(name=name, sequence_id=str(rep["sequence_id"]),
                                cluster=int(rep["cluster"]), peptide=job.sequence,
                                inputs=arts, commands=job.commands, outputs=list(job.outputs)))
    return plans, inputs_nc


CHECK_INPUTS: tuple[str, ...] = ("em.mdp", "md.mdp")
"""Staged inputs the sanity checks read (emtol, ref-t)."""


def add_checks_attribute(netcdf: str | Path, checks: MdChecks) -> None:
    """Store the check record in the NetCDF as the global attribute `md_checks` (JSON).

    Args:
        netcdf: the trajectory file, modified in place.
        checks: the check record, as `check_simulation` returns it.

    Returns:
        None.
    """
    from netCDF4 import Dataset

    with Dataset(str(netcdf), "a") as ds:
        ds.setncattr("md_checks", checks.model_dump_json())


@task(name="md-trajectory", task_run_name="trajectory-{plan.name}",
      **stage_options(GROMACS_VERSION))
def md_trajectory(plan: MdPlan, outputs: dict[str, Artifact], store: Store,
                  run_id: str) -> Artifact:
    """A finished simulation's outputs → AMBER-convention NetCDF trajectory (Å, ps) with
    energy, temperature, pressure, RMSD and radius-of-gyration series, made from
    md-whole.xtc (molecules whole, the peptide centred), and its sanity checks
    (tasks/md_checks.py) in the NetCDF (attribute `md_checks`) and in the artifact's
    metadata (`md_checks`, hence in lineage).

    Args:
        plan: the simulation (its staged inputs hold em.mdp and md.mdp)
        outputs: the job's outputs by name (`md_outputs`)
        store: where to publish
        run_id: the run

    Returns:
        The trajectory artifact; a failed check is recorded, never raised.
    """
    from helixflow.tables import fetch

    with store.scratch() as scratch:
        work = scratch / plan.name
        work.mkdir()
        wanted = {**{n: outputs[n] for n in ("md.tpr", WHOLE_TRAJECTORY, "energy.xvg",
                                             "md.gro", "em.log", "nvt.log", "md.log",
                                             "nvt.stderr", "md.stderr")},
                  **{n: outputs[n] for n in ("npt.log", "npt.stderr") if n in outputs},
                  **{n: plan.inputs[n] for n in CHECK_INPUTS}}
        for name, art in wanted.items():
            local = fetch(store, art, work, name=name)
            if local.parent != work:
                (work / name).symlink_to(local)
        nc = md_outputs_to_netcdf(work, scratch / f"{plan.name}.nc", {
            "run_id": run_id, "sequence_id": plan.sequence_id, "cluster": plan.cluster,
            "peptide": plan.peptide})
        checks = check_simulation(work, nc)
        add_checks_attribute(nc, checks)
        return publish_file(store, nc, run_id=run_id, stage="md", media_type="application/x-netcdf",
                            producer="md-trajectory", upstream=[a.ref() for a in outputs.values()],
                            params={"sequence_id": plan.sequence_id, "peptide": plan.peptide},
                            metadata={"md_checks": checks.model_dump(mode="json")})
