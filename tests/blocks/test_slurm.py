"""The SlurmCluster block: defaults, validation, secrets, SSH target."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from helixflow.blocks.slurm import SlurmCluster


def test_defaults_are_local_cli_with_sane_polling() -> None:
    block = SlurmCluster()
    assert block.mode == "local-cli"
    assert block.poll_interval <= block.poll_max_interval
    assert block.signal == "B:TERM@60"
    assert block.scratch_dir.endswith("slurm-scratch")


def test_ssh_mode_needs_a_host_and_builds_the_target() -> None:
    with pytest.raises(ValidationError, match="ssh_host"):
        SlurmCluster(mode="ssh")
    block = SlurmCluster(mode="ssh", ssh_host="login", ssh_user="u", ssh_key_path="/k",
                         ssh_options=["ConnectTimeout=5"])
    target = block.ssh_target()
    assert target.destination == "u@login"
    assert "ConnectTimeout=5" in target.ssh_base()
    assert block.ssh_target("/tmp/other-key").key_path == "/tmp/other-key"


def test_secret_key_is_not_shown() -> None:
    block = SlurmCluster(mode="ssh", ssh_host="h", ssh_private_key=SecretStr("PRIVATE"))
    assert "PRIVATE" not in repr(block)
    assert "PRIVATE" not in block.model_dump_json()


def test_scratch_with_spaces_and_quotes_is_fine_but_a_line_break_is_refused() -> None:
    assert SlurmCluster(scratch_dir="/shared/my scratch;'$(x)'").scratch_dir.endswith("'$(x)'")
    with pytest.raises(ValidationError, match="SBATCH"):
        SlurmCluster(scratch_dir="/shared/my\nscratch")


def test_poll_settings_validated() -> None:
    with pytest.raises(ValidationError):
        SlurmCluster(poll_interval=10, poll_max_interval=1)
    with pytest.raises(ValidationError):
        SlurmCluster(poll_backoff=0.5)


@pytest.mark.integration
def test_block_saves_and_loads(prefect_api: str) -> None:
    SlurmCluster(mode="none", partition="debug", setup_lines=["module load x"],
                 max_concurrent=3).save("test-slurm", overwrite=True)
    loaded = SlurmCluster.load("test-slurm")
    assert loaded.partition == "debug" and loaded.setup_lines == ["module load x"]
    assert loaded.max_concurrent == 3
