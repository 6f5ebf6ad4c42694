"""The `call-variants` flow: SNVs and small indels from a user's sorted BAM and reference.

The pipeline calls variants on the BAMs it makes; this flow does the same for BAMs made
elsewhere (another aligner, an earlier run), with the same checks: a reference that
does not match the BAM (contig names or lengths) is a one-line error, not a traceback.
"""

from __future__ import annotations

from typing import Any

import fsspec
from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from helixflow.blocks.store import resolve_store
from helixflow.flows.preprocess import stage_params
from helixflow.recorder import RunRecorder
from helixflow.resources import profile
from helixflow.runner import DeferredRayTaskRunner
from helixflow.samples import safe_name
from helixflow.tasks.ingest import identify_input
from helixflow.tasks.reference import validate_reference
from helixflow.tasks.variant_caller import VariantParams
from helixflow.tasks.variants import call_sample_variants
from helixflow.uris import display_name, is_local, local_path, uri_name


class VariantsSummary(BaseModel):
    run_id: str
    vcf_uri: str
    counts: dict[str, int]


@flow(name="call-variants", flow_run_name="{run_label}", log_prints=True,
      task_runner=DeferredRayTaskRunner())
def call_variants_flow(
    bam: str,
    reference: str,
    sample: str | None = None,
    variant_options: dict[str, Any] | None = None,
    store: str | None = None,
    store_block: str | None = None,
    run_label: str = "call-variants",
) -> VariantsSummary:
    """Call variants on a coordinate-sorted BAM (indexed or not) against its reference.

    Args:
        bam: the BAM (path or s3://); a `.bai` beside it is used when present
        reference: the FASTA the reads were aligned to (path or s3://)
        sample: VCF sample name and output name (default: the BAM's name)
        variant_options: caller thresholds (fields of `tasks.variants.VariantParams`)
        store: store URL; store_block: a saved `HelixflowStore` block
        run_label: the flow run's display name
    """
    logger = get_run_logger()
    st = resolve_store(store, store_block)
    run_id = str(runtime.flow_run.id)
    params = stage_params(VariantParams, variant_options, "variant")
    name = safe_name(sample or uri_name(bam).removesuffix(".bam"))  # a file name, too
    opts = st.storage_options if st.scheme == "s3" else None
    bai_uri = f"{bam}.bai"
    with profile("light"):
        refs = {u: identify_input.submit(u, opts if u.startswith("s3://") else None)
                for u in (bam, reference)}
        checked = validate_reference.submit(refs[reference].result(), st)
    checked.result()
    bai = None
    if _exists(bai_uri, opts):
        bai = identify_input.submit(bai_uri, opts if bai_uri.startswith("s3://") else None)
    recorder = RunRecorder(st, run_id)
    with profile("stream"):
        future = call_sample_variants.with_options(
            assets=[st.asset_uri(run_id, "variants", name)]
        ).submit(name, refs[bam].result(), bai.result() if bai else None,
                 refs[reference].result(), params, st, run_id)
    result = future.result()
    vcf, _tbi = recorder.record(future, [result.vcf, result.tbi])
    recorder.flush()
    create_table_artifact(key="variants", table=[{"sample": name, **result.counts}],
                          description=f"Variant calls of {display_name(bam)}")
    logger.info("VCF: %s", vcf.uri)
    return VariantsSummary(run_id=run_id, vcf_uri=vcf.uri, counts=result.counts)


def _exists(uri: str, storage_options: dict[str, Any] | None) -> bool:
    if is_local(uri):
        return local_path(uri).exists()
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    return bool(fs.exists(path))
