"""Phase 2: embeddings → graph and spectral analysis → representatives → peptide MD with
GROMACS through the Slurm sub-flow (or locally without a cluster) → NetCDF trajectories.

Every artifact links back: trajectory → MD outputs → staged inputs → NetCDF inputs →
representatives → embedding shards → read shards → FASTQ. Finished simulations are
reused by content: the same inputs (peptide, .mdp's, commands) never run twice in a
store, so a second `helixflow run` costs no MD time.
Functions here submit tasks and sub-flows and record lineage; they do no heavy work.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from typing import Any

from prefect import get_run_logger
from pydantic import BaseModel, Field

from helixflow.artifacts import Artifact, FileRef, Skipped
from helixflow.blocks.gromacs import GromacsSettings
from helixflow.errors import HelixflowError
from helixflow.flows.slurm import run_slurm_jobs
from helixflow.flows.stages import log_stage_done
from helixflow.recorder import RunRecorder
from helixflow.resources import profile
from helixflow.slurm import JobSpec
from helixflow.store import Store
from helixflow.tasks.analysis import AnalysisParams, AnalysisResult, analyze_embeddings
from helixflow.tasks.gromacs import MdPlan, md_trajectory, prepare_md
from helixflow.tasks.md_checks import MdChecks

# A short demo simulation: enough frames to read back, a minute of MD per peptide.
DEMO_MD: dict[str, Any] = {"em_nsteps": 500, "nvt_nsteps": 500, "md_nsteps": 1000,
                           "nstxout_compressed": 100, "nstenergy": 100, "nstlog": 100,
                           "ntomp": 1}


class SimulateParams(BaseModel):
    """Phase 2 settings: which embedding to analyse, and how much MD to run.

    Example:
        >>> SimulateParams(method="kmer5", max_representatives=4, md_steps=5000)  # doctest: +SKIP
    """

    method: str | None = None
    """Embedding method to analyse (default: the first of kmer5, lshvec, dnabert-mean;
    k-mer spectra separate the demo's genomes best, see the README's benchmarks)."""
    analysis: AnalysisParams = Field(default_factory=AnalysisParams)
    max_representatives: int = Field(2, ge=0)
    """Simulations to run: the medoids of the largest clusters (0: no MD)."""
    md_steps: int | None = Field(None, ge=1)
    """Production MD steps (default: the GROMACS block's, or a short demo run)."""
    peptide_min: int = Field(5, ge=2)
    peptide_max: int = Field(10, ge=2)
    """Longer peptides need bigger water boxes: 10 residues keep a demo box near 10k atoms."""
    gromacs_block: str | None = None
    """A saved `GromacsSettings` block; default: its defaults with a short demo MD."""
    cluster_block: str | None = None
    """A saved `SlurmCluster` block; default: run the jobs here, without Slurm."""


def _settings(params: SimulateParams) -> GromacsSettings:
    if params.gromacs_block:
        settings = GromacsSettings.load(params.gromacs_block)
    else:
        settings = GromacsSettings(**DEMO_MD)
    if params.md_steps:
        settings = settings.model_copy(update={"md_nsteps": params.md_steps})
        settings = GromacsSettings.model_validate(settings.model_dump())  # re-validate
    return settings


def _job_key(plan: MdPlan) -> str:
    """Content key of a simulation: its commands and its inputs' bytes (not their names
    in this run), so the same simulation is found again from any run."""
    content = {"commands": plan.commands, "outputs": plan.outputs,
               "inputs": {n: a.sha256 for n, a in sorted(plan.inputs.items())
                          if n != "inputs.nc"}}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _cached_outputs(store: Store, plan: MdPlan) -> dict[str, Artifact] | None:
    uri = store.join("cache", "md", f"{_job_key(plan)}.json")
    if not store.exists(uri):
        return None
    outputs = {k: Artifact.model_validate(v) for k, v in json.loads(store.read_bytes(uri)).items()}
    return outputs if all(store.exists(a.cas_uri) for a in outputs.values()) else None


def _remember(store: Store, plan: MdPlan, outputs: dict[str, Artifact]) -> None:
    store.write_bytes_atomic(store.join("cache", "md", f"{_job_key(plan)}.json"), json.dumps(
        {k: a.model_dump(mode="json") for k, a in outputs.items()}).encode())


def pick_method(available: list[str], wanted: str | None,
                skipped: Sequence[Skipped] = ()) -> str | Skipped:
    """The embedding method phase 2 analyses: `wanted`, else the first of kmer5, lshvec,
    dnabert-mean; `Skipped` when there is none because the embedding stage was skipped."""
    left_out = [s for s in skipped if s.stage == "embedding"]
    if wanted:
        why = next((s for s in left_out if wanted.startswith(s.sample)), None)
        if wanted not in available and why is not None:
            return Skipped(stage="analysis", sample=wanted,
                           reason=f"its embedding was skipped ({why.reason})")
        if wanted not in available:
            raise HelixflowError(f"no {wanted!r} embeddings in this run",
                                 hint=f"computed: {', '.join(available) or 'none'}")
        return wanted
    for preferred in ("kmer5", "lshvec", "dnabert-mean"):
        if preferred in available:
            return preferred
    if not available and left_out:
        return Skipped(stage="analysis", sample="run", reason="every embedding was skipped")
    if not available:
        raise HelixflowError("phase 2 needs embeddings, and none were computed",
                             hint="keep at least one --embed method")
    return available[0]


def run_simulations(
    embeddings: dict[str, list[Artifact]],
    params: SimulateParams,
    truth: FileRef | None,
    store: Store,
    run_id: str,
    recorder: RunRecorder,
    store_block: str | None = None,
) -> tuple[AnalysisResult | None, list[Artifact]]:
    """Analyse one method's embeddings, then simulate its representatives' peptides.
    Too few vectors (or no embeddings left): analysis and MD skipped, (None, [])."""
    logger = get_run_logger()
    method = pick_method(list(embeddings), params.method, recorder.skipped)
    if isinstance(method, Skipped):
        return _analysis_skipped(method, params, recorder)
    with profile("shard"):
        future = analyze_embeddings.with_options(
            assets=[store.asset_uri(run_id, "analysis", method)]
        ).submit(method, embeddings[method], params.analysis, truth, "genome", store, run_id)
    analysis = future.result()
    if isinstance(analysis, Skipped):
        return _analysis_skipped(analysis, params, recorder)
    clusters, reps, plot = recorder.record(
        future, [analysis.clusters, analysis.representatives, analysis.projection])
    analysis = analysis.model_copy(update={"clusters": clusters, "representatives": reps,
                                           "projection": plot})
    recorder.flush()
    m = analysis.metrics
    log_stage_done(logger, "analysis", f"{method}: {m.get('n_clusters')} clusters, "
                   f"{m.get('communities')} communities in {m.get('vectors', 0):,} vectors" + (
                       "" if m.get("ari_spectral") is None else
                       f", ARI spectral {m['ari_spectral']:.3f} / Leiden "
                       f"{m.get('ari_leiden') or 0:.3f}"))
    if params.max_representatives == 0:
        return analysis, []
    trajectories = simulate_representatives(method, analysis.representatives, params, store,
                                            run_id, recorder, store_block)
    return analysis, trajectories


def _analysis_skipped(outcome: Skipped, params: SimulateParams, recorder: RunRecorder
                      ) -> tuple[None, list[Artifact]]:
    """Record a skipped analysis, and the MD that had no representatives because of it."""
    recorder.skip(outcome.stage, outcome.sample, outcome.reason)
    if params.max_representatives:
        recorder.skip("md", "run", "no analysis to take representatives from")
    return None, []


def simulate_representatives(
    method: str,
    reps: Artifact,
    params: SimulateParams,
    store: Store,
    run_id: str,
    recorder: RunRecorder,
    store_block: str | None = None,
) -> list[Artifact]:
    """MD of the peptides of a representatives table's largest clusters (finished
    simulations reused by content) → NetCDF trajectories."""
    settings = _settings(params)
    local = params.cluster_block is None
    if local and shutil.which(settings.gmx) is None:
        recorder.skip("md", method, f"GROMACS ({settings.gmx}) is not installed here and no "
                                    "Slurm cluster is configured (apt-get install gromacs, "
                                    "or set cluster_block)")
        return []
    with profile("light"):
        prep = prepare_md.submit(method, reps, settings, params.max_representatives,
                                 params.peptide_min, params.peptide_max, local, store, run_id)
    plans, inputs_nc = prep.result()
    if inputs_nc is None:
        recorder.skip("md", method, f"no representative read has an ORF long enough for a "
                                    f"{params.peptide_min}-residue peptide")
        return []
    recorder.record(prep, [inputs_nc, *(a for p in plans for n, a in p.inputs.items()
                                        if n != "inputs.nc")])

    outputs: dict[str, dict[str, Artifact]] = {}
    todo = []
    for plan in plans:
        hit = _cached_outputs(store, plan)
        if hit is not None:
            outputs[plan.name] = dict(zip(hit, recorder.record_outputs(
                list(hit.values()), None, cached=True), strict=True))
        else:
            todo.append(plan)
    if todo:
        jobs = [JobSpec(name=p.name, commands=p.commands, inputs=dict(p.inputs),
                        outputs=p.outputs, cpus=settings.ntomp) for p in todo]
        state = run_slurm_jobs(jobs, cluster_block=params.cluster_block, store=store.url,
                               store_block=store_block, run_id=run_id, stage="md-jobs",
                               return_state=True)
        results = state.result()  # raises SlurmJobFailed with the job's stderr tail
        sub_run = str(state.state_details.flow_run_id)
        for plan, result in zip(todo, results, strict=True):
            recorded = recorder.record_outputs(list(result.outputs.values()), sub_run)
            outputs[plan.name] = dict(zip(result.outputs, recorded, strict=True))
            _remember(store, plan, result.outputs)
    recorder.flush()

    with profile("light"):
        futures = [md_trajectory.submit(plan, outputs[plan.name], store, run_id)
                   for plan in plans]
    trajectories = [recorder.record(f, [f.result()])[0] for f in futures]
    recorder.flush()
    warn_failed_checks(trajectories, recorder)
    return trajectories


def warn_failed_checks(trajectories: Sequence[Artifact], recorder: RunRecorder) -> list[str]:
    """One run warning per failed sanity check: `md check failed for <simulation>:
    <check>: <figures>`; returns the lines (a failed check never fails the run)."""
    lines = []
    for t in trajectories:
        checks = md_checks_of(t)
        for failure in checks.failures() if checks else []:
            lines.append(recorder.warn(f"md check failed for {simulation_name(t)}: {failure}"))
    return lines


def simulation_name(trajectory: Artifact) -> str:
    """The simulation a trajectory comes from (`md-c<cluster>-<i>`, its file's stem)."""
    return trajectory.name.removesuffix(".nc")


def md_checks_of(trajectory: Artifact) -> MdChecks | None:
    """A trajectory's sanity checks (artifact metadata); None if made before they existed."""
    record = trajectory.metadata.get("md_checks")
    return None if record is None else MdChecks.model_validate(record)


def md_check_rows(trajectories: Sequence[Artifact]) -> list[dict[str, Any]]:
    """One row per trajectory (the `md` UI table and the run summary): simulation, URI,
    peptide, the checks' figures and verdicts (`MdChecks.row`) and `failed_checks`
    (names of the failed ones, comma separated; empty when all passed)."""
    rows = []
    for t in trajectories:
        row: dict[str, Any] = {"simulation": simulation_name(t), "trajectory": t.uri,
                               **t.params}
        checks = md_checks_of(t)
        if checks is not None:
            row.update(checks.row())
            row["failed_checks"] = ", ".join(checks.failed())
        rows.append(row)
    return rows
