"""Registering helixflow's block types with a Prefect server, and its default documents.

`helixflow blocks register` calls `register_blocks`: every block type becomes editable in
the UI (Blocks → Add), and the default documents the deployments name are created from a
TOML file or, without one, from the environment. Existing documents are kept unless
`overwrite` (a UI edit is not silently reverted by a redeploy).

Config file (every section optional; each table under a section is one document):

    [store.default]
    url = "s3://genomics/helixflow"
    endpoint_url = "http://minio:9000"
    credentials = "genomics-aws"       # a saved AwsCredentials block

    [slurm.hpc]
    partition = "compute"
    setup_lines = ["module load gromacs/2022.5"]

    [gromacs.default]
    md_nsteps = 50000

    [models.production]
    lshvec_model = "s3://genomics/helixflow/runs/<run>/models/lshvec-model.tar"
"""

from __future__ import annotations

import os
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.blocks.core import Block
from pydantic import ValidationError

from helixflow.blocks.gromacs import GromacsSettings
from helixflow.blocks.models import ModelRegistry
from helixflow.blocks.slurm import SlurmCluster
from helixflow.blocks.store import HelixflowStore
from helixflow.errors import HelixflowError
from helixflow.settings import default_store_url

BLOCK_TYPES: dict[str, type[Block]] = {
    "store": HelixflowStore,
    "slurm": SlurmCluster,
    "gromacs": GromacsSettings,
    "models": ModelRegistry,
}
AWS_BLOCK = "helixflow-aws"


@dataclass
class Registered:
    """One block document: created, replaced, or kept as it was."""

    slug: str
    name: str
    action: str  # created | overwritten | kept


def register_block_types() -> list[str]:
    """Register (or update) every helixflow block type and its schema; their slugs."""
    from prefect_aws import AwsCredentials

    slugs = []
    for cls in (*BLOCK_TYPES.values(), AwsCredentials):
        cls.register_type_and_schema()
        slugs.append(cls.get_block_type_slug())
    return slugs


def load_config(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """The TOML config: section → document name → field values."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise HelixflowError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise HelixflowError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(data) - set(BLOCK_TYPES)
    if unknown:
        raise HelixflowError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}",
                             hint=f"sections are {', '.join(BLOCK_TYPES)}")
    for section, docs in data.items():
        if not isinstance(docs, dict) or not all(isinstance(v, dict) for v in docs.values()):
            raise HelixflowError(f"{path}: [{section}] must hold tables like "
                                 f"[{section}.default]")
    return data


def config_from_env() -> dict[str, dict[str, dict[str, Any]]]:
    """Default documents when no config file is given: the store the CLI would use, the
    GROMACS defaults, an empty model registry, and the local Slurm cluster when this
    machine has one."""
    store: dict[str, Any] = {"url": default_store_url()}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if store["url"].startswith("s3://"):
        if endpoint:
            store["endpoint_url"] = endpoint
        if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
            store["credentials"] = AWS_BLOCK
    config: dict[str, dict[str, dict[str, Any]]] = {
        "store": {"default": store}, "gromacs": {"default": {}}, "models": {"default": {}},
    }
    if shutil.which("sbatch"):
        config["slurm"] = {"default": {"mode": "local-cli"}}
    return config


def _aws_from_env(overwrite: bool) -> Registered:
    """The `AwsCredentials` block the store names, from the standard AWS variables (the
    secret is a `SecretStr`, never printed)."""
    from prefect_aws import AwsClientParameters, AwsCredentials

    action = _existing(AwsCredentials, AWS_BLOCK, overwrite)
    if action != "kept":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        AwsCredentials(
            aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=os.environ.get("AWS_SESSION_TOKEN"),
            region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
            aws_client_parameters=AwsClientParameters(endpoint_url=endpoint),
        ).save(AWS_BLOCK, overwrite=True)
    return Registered(AwsCredentials.get_block_type_slug(), AWS_BLOCK, action)


def _existing(cls: type[Block], name: str, overwrite: bool) -> str:
    try:
        cls.load(name)
    except ValueError:
        return "created"
    return "overwritten" if overwrite else "kept"


def _build(section: str, name: str, values: dict[str, Any]) -> Block:
    cls = BLOCK_TYPES[section]
    values = dict(values)
    if section == "store" and isinstance(values.get("credentials"), str):
        from prefect_aws import AwsCredentials

        values["credentials"] = AwsCredentials.load(values["credentials"])
    try:
        return cls(**values)
    except (ValidationError, HelixflowError) as exc:
        raise HelixflowError(f"[{section}.{name}]: {exc}") from None


def register_blocks(config: Path | None = None, *, overwrite: bool = False) -> list[Registered]:
    """Register the block types, then create the documents of `config` (TOML) or, without
    one, the defaults from the environment."""
    register_block_types()
    data = load_config(config) if config else config_from_env()
    done: list[Registered] = []
    if config is None and data["store"]["default"].get("credentials") == AWS_BLOCK:
        done.append(_aws_from_env(overwrite))
    for section, docs in data.items():
        cls = BLOCK_TYPES[section]
        for name, values in docs.items():
            action = _existing(cls, name, overwrite)
            if action != "kept":
                _build(section, name, values).save(name, overwrite=True)
            done.append(Registered(cls.get_block_type_slug(), name, action))
    return done
