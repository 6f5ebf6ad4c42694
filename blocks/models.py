"""The `ModelRegistry` block: which trained embedding models a deployment uses.

Models are artifacts in a store like any other output (content-addressed, with lineage to
the reads they were trained on). The registry names the ones in service, so scheduled
re-embedding (`embed-refresh`) produces vectors comparable night after night instead of
retraining on every run.
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, field_validator


class ModelRegistry(Block):
    """The embedding models in service, by artifact URI or checkpoint location.

    `lshvec_model` is the `models/lshvec` artifact of a run (its LSH hash is found through
    lineage); `dnabert_checkpoint` is a DNABERT-layout directory (a local path, or an
    artifact URI of a pretrained model). Unset: `embed-refresh` trains on the shards it
    embeds, like `helixflow run` does.

    Example:
        ```python
        from helixflow.blocks.models import ModelRegistry

        ModelRegistry(
            lshvec_model="s3://genomics/helixflow/runs/<run>/models/lshvec.pt",
            dnabert_checkpoint="/shared/models/dnabert-6",
        ).save("production")
        # then: helixflow deploy, and embed-refresh with model_block="production"
        ```
    """

    _block_type_name = "helixflow model registry"
    _block_type_slug = "helixflow-model-registry"
    _description = "Embedding models in service for helixflow's scheduled re-embedding."

    lshvec_model: str | None = Field(
        default=None, title="LSHvec model",
        description="URI of a trained LSHvec model artifact (runs/<run>/models/…).",
    )
    dnabert_checkpoint: str | None = Field(
        default=None, title="DNABERT checkpoint",
        description="DNABERT-layout checkpoint directory (path or artifact URI).",
    )
    kmer_k: int = Field(default=5, ge=3, le=7, description="k of the k-mer spectra in service.")

    @field_validator("lshvec_model", "dnabert_checkpoint")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        return value
