"""What Slurm says: squeue/sbatch/scontrol parsing, the state table, memory kills, exit codes."""

from __future__ import annotations

import pytest
from prefect.client.schemas.objects import StateType

from helixflow.errors import HelixflowError
from helixflow.slurm_states import (
    STATE_TABLE,
    exit_status,
    grown_memory,
    normalise_state,
    parse_sbatch_id,
    parse_scontrol,
    parse_squeue,
    prefect_state,
    refine_state,
    state_rule,
)


def test_parse_squeue_plain_array_and_folded() -> None:
    text = (
        "12|RUNNING|None\n"
        "13_0|COMPLETED|None\n"
        "13_[1-3,5%2]|PENDING|JobArrayTaskLimit\n"
        "14|CANCELLED by 0|None\n"
        "15|WEIRD_NEW_STATE|x\n"
        "\n"
    )
    entries = parse_squeue(text)
    assert entries["12"].state == "RUNNING"
    assert entries["13_0"].state == "COMPLETED"
    assert [k for k in entries if k.startswith("13_")] == ["13_0", "13_1", "13_2", "13_3", "13_5"]
    assert entries["13_5"].reason == "JobArrayTaskLimit"
    assert entries["14"].state == "CANCELLED"
    assert entries["15"].state == "UNKNOWN"
    assert parse_squeue("") == {}


def test_parse_sbatch_and_scontrol() -> None:
    assert parse_sbatch_id("123\n") == "123"
    assert parse_sbatch_id("124;cluster\n") == "124"
    with pytest.raises(HelixflowError):
        parse_sbatch_id("sbatch: error: invalid partition\n")
    fields = parse_scontrol("JobId=3 JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0")
    assert fields["ExitCode"] == "3:0" and fields["JobState"] == "FAILED"


EXPECTED = {
    # state: (Prefect state type, final, resubmitted, raises)
    "PENDING": (StateType.PENDING, False, False, False),
    "RUNNING": (StateType.RUNNING, False, False, False),
    "COMPLETED": (StateType.COMPLETED, True, False, False),
    "FAILED": (StateType.FAILED, True, False, True),
    "TIMEOUT": (StateType.FAILED, True, False, True),
    "OUT_OF_MEMORY": (StateType.FAILED, True, True, True),
    "NODE_FAIL": (StateType.FAILED, True, True, True),
    "PREEMPTED": (StateType.FAILED, True, True, True),
    "CANCELLED": (StateType.CANCELLED, True, False, True),
    "BOOT_FAIL": (StateType.FAILED, True, False, True),
    "DEADLINE": (StateType.FAILED, True, False, True),
    "UNKNOWN": (StateType.CRASHED, True, False, True),
}


@pytest.mark.parametrize("slurm_state", sorted(EXPECTED))
def test_state_table(slurm_state: str) -> None:
    rule = state_rule(slurm_state)
    assert (rule.prefect, rule.final, rule.resubmit, rule.error) == EXPECTED[slurm_state]
    state = prefect_state(slurm_state)
    assert state.type == EXPECTED[slurm_state][0]
    assert slurm_state in (state.message or "")


def test_a_state_being_resubmitted_is_awaiting_retry_not_failed() -> None:
    state = prefect_state("PREEMPTED", "Slurm job 7 ended PREEMPTED", resubmitting=True)
    assert state.type == StateType.SCHEDULED and state.name == "AwaitingRetry"
    assert not state.is_failed() and state.message == "Slurm job 7 ended PREEMPTED"


def test_unknown_is_never_success() -> None:
    for text in ("UNKNOWN", "", "SOMETHING_NEW", "completed?"):
        assert normalise_state(text) == "UNKNOWN"
        assert state_rule(text).prefect != StateType.COMPLETED
    assert all(not r.error for s, r in STATE_TABLE.items() if r.prefect == StateType.COMPLETED)


# What slurmstepd wrote to a job's stderr on the local cluster (Slurm 22.05, jobacct_gather
# OverMemoryKill; squeue said FAILED, reason JobLaunchFailure, ExitCode 0:9).
OVER_MEMORY_STDERR = """allocating
slurmstepd-vm: error: StepId=1.batch exceeded memory limit (303157248 > 104857600), being killed
slurmstepd-vm: error: Exceeded job memory limit
slurmstepd-vm: error: *** JOB 1 ON vm CANCELLED AT 2026-12-02T16:52:59 ***
"""
CGROUP_OOM_STDERR = ("slurmstepd: error: Detected 1 oom_kill event in StepId=9.batch. "
                     "Some of the step tasks have been OOM Killed.\n")


def test_a_memory_kill_is_out_of_memory_whatever_the_enforcement() -> None:
    assert refine_state("FAILED", OVER_MEMORY_STDERR) == "OUT_OF_MEMORY"
    assert refine_state("CANCELLED by 0", CGROUP_OOM_STDERR) == "OUT_OF_MEMORY"
    assert refine_state("OUT_OF_MEMORY", "") == "OUT_OF_MEMORY"
    # The job's own words are not slurmstepd's; other failures stay what they were.
    assert refine_state("FAILED", "my tool: error: exceeded memory limit\n") == "FAILED"
    assert refine_state("FAILED", "disk full\n") == "FAILED"
    assert refine_state("TIMEOUT", OVER_MEMORY_STDERR) == "TIMEOUT"
    assert refine_state("COMPLETED", OVER_MEMORY_STDERR) == "COMPLETED"


def test_exit_status_and_grown_memory() -> None:
    assert exit_status("3:0") == 3
    assert exit_status("0:9") == 137  # killed by SIGKILL, as a shell reports it
    assert exit_status("0:0") == 0
    assert exit_status("") is None
    assert [grown_memory(100), grown_memory(1), grown_memory(100, 1.5)] == [200, 2, 150]
    with pytest.raises(ValueError):
        grown_memory(100, 1.0)
