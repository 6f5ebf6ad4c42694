"""The `SlurmCluster` block: where batch jobs go, with which defaults, and how to reach it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator, model_validator

from helixflow.errors import HelixflowError
from helixflow.ray_slurm import RaySlurmSpec
from helixflow.settings import helixflow_home
from helixflow.slurm import SshTarget, check_header_value


def _default_scratch() -> str:
    return str(helixflow_home() / "slurm-scratch")


class SlurmCluster(Block):
    """A Slurm cluster (or none): partition, account, QOS, default resources, the shared
    scratch directory jobs run in, environment setup lines, and how to reach `sbatch`.

    `mode` is `local-cli` (Slurm commands on this machine), `ssh` (on a login node, files
    copied with rsync over SSH) or `none` (no Slurm: the same job scripts run here with
    bash, through the same interface). Poll settings: one batched `squeue` per cycle, the
    interval growing by `poll_backoff` up to `poll_max_interval` and reset on any change.

    Example:
        ```python
        from helixflow.blocks.slurm import SlurmCluster

        SlurmCluster(
            partition="compute", account="genomics", qos="normal",
            scratch_dir="/shared/scratch/helixflow",
            setup_lines=["module load gromacs/2022.5"],
            default_cpus=8, default_mem_mb=16000, default_time_limit=240,
            max_concurrent=20,
        ).save("hpc")
        # then: run_slurm_jobs(jobs, cluster_block="hpc", run_id=...)
        ```
    """

    _block_type_name = "helixflow slurm cluster"
    _block_type_slug = "helixflow-slurm-cluster"
    _description = "A Slurm cluster for helixflow batch jobs (local CLI, SSH, or none)."

    mode: Literal["local-cli", "ssh", "none"] = Field(
        default="local-cli", description="local-cli, ssh, or none (run jobs here with bash)."
    )
    partition: str | None = Field(default=None, description="--partition (default: the cluster's).")
    account: str | None = Field(default=None, description="--account to charge.")
    qos: str | None = Field(default=None, title="QOS", description="--qos.")
    default_cpus: int = Field(default=1, ge=1, description="--cpus-per-task when a job says none.")
    default_mem_mb: int = Field(default=1024, ge=1, description="--mem (MB) when a job says none.")
    default_time_limit: int = Field(
        default=60, ge=1, description="--time in minutes when a job says none."
    )
    ray_cpus_per_node: int = Field(
        default=2, ge=1, description="CPUs per node of a Ray-on-Slurm allocation.")
    ray_mem_mb: int = Field(
        default=8000, ge=1000, description="--mem (MB) per node of a Ray-on-Slurm allocation.")
    scratch_dir: str = Field(
        default_factory=_default_scratch,
        description="Shared scratch seen by login and compute nodes (remote path for ssh).",
    )
    setup_lines: list[str] = Field(
        default_factory=list,
        description="Shell lines run before each job's commands (module load, conda activate).",
    )
    signal: str | None = Field(
        default="B:TERM@60",
        description="--signal: warn the job before its time limit (forwarded to the command).",
    )
    extra_sbatch_args: list[str] = Field(
        default_factory=list, description="More #SBATCH options, e.g. --constraint=avx2."
    )
    max_concurrent: int | None = Field(
        default=None, ge=1, description="Array throttle: at most this many tasks at once (%M)."
    )
    max_resubmits: int = Field(
        default=2, ge=0, description="Resubmissions of a job that hit NODE_FAIL or PREEMPTED."
    )
    poll_interval: float = Field(default=5.0, gt=0, description="First poll interval (s).")
    poll_backoff: float = Field(default=1.5, ge=1, description="Poll interval growth per cycle.")
    poll_max_interval: float = Field(default=60.0, gt=0, description="Longest poll interval (s).")
    sentinel_timeout: float = Field(
        default=60.0, ge=0,
        description="Seconds to wait for a job's exit-code file once it left the queue.",
    )
    keep_scratch: bool = Field(
        default=False, description="Keep job directories after success (always kept on failure)."
    )
    ssh_host: str | None = Field(default=None, description="Login node (mode ssh).")
    ssh_user: str | None = Field(default=None, description="SSH user (mode ssh).")
    ssh_port: int = Field(default=22, ge=1, le=65535)
    ssh_key_path: str | None = Field(default=None, description="Private key file (mode ssh).")
    ssh_private_key: SecretStr | None = Field(
        default=None, description="Private key text, written to a 0600 file only when used."
    )
    ssh_options: list[str] = Field(
        default_factory=list, description="Extra `ssh -o` options, e.g. StrictHostKeyChecking=yes."
    )
    local_staging_dir: str | None = Field(
        default=None, description="Local mirror of job directories for ssh mode (default: temp)."
    )

    @field_validator("scratch_dir")
    @classmethod
    def _scratch_ok(cls, value: str) -> str:
        try:
            check_header_value(value, "scratch_dir")
        except HelixflowError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _ssh_needs_host(self) -> SlurmCluster:
        if self.mode == "ssh" and not self.ssh_host:
            raise ValueError("mode 'ssh' needs ssh_host")
        if self.poll_max_interval < self.poll_interval:
            raise ValueError("poll_max_interval must be >= poll_interval")
        return self

    def ray_spec(self, nodes: int) -> RaySlurmSpec:
        """A Ray cluster of `nodes` nodes on this cluster (`helixflow run --ray-on-slurm`):
        its partition, account, QOS, setup lines and scratch folder, per node
        `ray_cpus_per_node` and `ray_mem_mb`, and the default time limit. Only a
        `local-cli` cluster can host one."""
        if self.mode != "local-cli":
            raise ValueError(f"Ray on Slurm needs a local-cli cluster, this one is {self.mode}")
        return RaySlurmSpec(
            nodes=nodes, cpus_per_node=self.ray_cpus_per_node, mem_mb=self.ray_mem_mb,
            time_limit_min=self.default_time_limit, partition=self.partition,
            account=self.account, qos=self.qos, setup_lines=tuple(self.setup_lines),
            scratch_dir=Path(self.scratch_dir))

    def ssh_target(self, key_path: str | None = None) -> SshTarget:
        """The SSH target; `key_path` overrides the block's (a file written from the secret)."""
        if not self.ssh_host:
            raise ValueError("no ssh_host configured")
        return SshTarget(
            host=self.ssh_host, user=self.ssh_user, port=self.ssh_port,
            key_path=key_path or self.ssh_key_path, options=tuple(self.ssh_options),
        )
