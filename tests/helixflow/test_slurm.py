"""The Slurm kernel: script rendering and quoting, squeue parsing, states, backoff, SSH argv."""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

import pytest
from prefect.client.schemas.objects import StateType

from helixflow.errors import HelixflowError
from helixflow.slurm import (
    EXITCODE_FILE,
    STATE_TABLE,
    JobSpec,
    SbatchOptions,
    SlurmJobFailed,
    SshTarget,
    array_spec,
    backoff,
    exit_status,
    format_minutes,
    grown_memory,
    job_name,
    literal_filename,
    normalise_state,
    parse_sbatch_id,
    parse_scontrol,
    parse_squeue,
    prefect_state,
    refine_state,
    render_array_script,
    render_job_script,
    state_rule,
)

HOSTILE = ["a b; rm -rf /", "$(whoami)", "`id`", "it's", 'say "hi"', "x\ny", "*"]


def header(**kw: object) -> SbatchOptions:
    base = dict(job_name="hf-run1-j", output="/s/0/slurm.out", error="/s/0/slurm.err",
                time_limit=90, cpus=2, mem_mb=512, signal="B:TERM@60")
    base.update(kw)
    return SbatchOptions(**base)  # type: ignore[arg-type]


def test_script_has_header_strict_mode_trap_and_quoted_commands() -> None:
    spec = JobSpec(name="j", commands=[["echo", *HOSTILE]], env={"GREETING": "$(whoami) x"})
    text = render_job_script(spec, "/s/0", header(partition="p", account="a", qos="q"),
                             setup_lines=["module load gromacs"])
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for opt in ("--job-name=hf-run1-j", "--output=/s/0/slurm.out", "--error=/s/0/slurm.err",
                "--time=0-01:30:00", "--cpus-per-task=2", "--mem=512M", "--no-requeue",
                "--signal=B:TERM@60", "--partition=p", "--account=a", "--qos=q"):
        assert f"#SBATCH {opt}" in lines
    assert "set -euo pipefail" in lines
    assert "trap __hf_finish EXIT" in lines
    assert "module load gromacs" in lines
    assert "export GREETING='$(whoami) x'" in lines
    assert "__hf_run " + shlex.join(["echo", *HOSTILE]) in text
    assert "'a b; rm -rf /'" in text and "'$(whoami)'" in text
    # Every #SBATCH line comes before the first command (sbatch stops at the first one).
    last_sbatch = max(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    assert last_sbatch < lines.index("set -euo pipefail")


def test_hostile_arguments_reach_the_program_literally(tmp_path: Path) -> None:
    out = tmp_path / "args.txt"
    spec = JobSpec(name="j", commands=[["python3", "-c",
                                        "import sys; open(sys.argv[1], 'w').write('\\0'.join("
                                        "sys.argv[2:]))", str(out), *HOSTILE]])
    script = tmp_path / "job.sh"
    script.write_text(render_job_script(spec, str(tmp_path), None))
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().split("\0") == HOSTILE
    assert (tmp_path / EXITCODE_FILE).read_text().strip() == "0"


def test_sentinel_records_a_failure_and_stderr_stays(tmp_path: Path) -> None:
    spec = JobSpec(name="j", commands=[["bash", "-c", "echo boom >&2; exit 3"], ["touch", "no"]])
    (tmp_path / "job.sh").write_text(render_job_script(spec, str(tmp_path), None))
    proc = subprocess.run(["bash", str(tmp_path / "job.sh")], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 3 and "boom" in proc.stderr
    assert (tmp_path / EXITCODE_FILE).read_text().strip() == "3"
    assert not (tmp_path / "no").exists()  # set -e: stops at the failing command
    assert not list(tmp_path.glob(".exitcode.tmp.*"))  # written atomically


def test_sigterm_is_forwarded_and_recorded(tmp_path: Path) -> None:
    spec = JobSpec(name="j", commands=[["touch", "started"], ["sleep", "30"]])
    (tmp_path / "job.sh").write_text(render_job_script(spec, str(tmp_path), None))
    proc = subprocess.Popen(["bash", str(tmp_path / "job.sh")])
    deadline = time.monotonic() + 30  # the trap is set before the first command runs
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline and proc.poll() is None, "job did not start"
        time.sleep(0.01)
    proc.terminate()
    assert proc.wait(timeout=10) == 143
    assert (tmp_path / EXITCODE_FILE).read_text().strip() == "143"
    assert (tmp_path / ".signal").read_text().strip() == "TERM"


def test_bash_body_runs_after_commands(tmp_path: Path) -> None:
    spec = JobSpec(name="j", commands=[["touch", "a"]], script="test -f a\necho ok > b\n")
    (tmp_path / "job.sh").write_text(render_job_script(spec, str(tmp_path), None))
    subprocess.run(["bash", str(tmp_path / "job.sh")], check=True)
    assert (tmp_path / "b").read_text() == "ok\n"


def test_array_script_dispatches_to_each_task() -> None:
    text = render_array_script(header(array=array_spec(3, 2), output="/s/b/%a/slurm.out"), "/s/b")
    assert "#SBATCH --array=0-2%2" in text
    assert "#SBATCH --output=/s/b/%a/slurm.out" in text
    assert 'exec /bin/bash /s/b/"$SLURM_ARRAY_TASK_ID"/job.sh' in text
    assert array_spec(4, None) == "0-3"


@pytest.mark.parametrize("bad", ["x\ny", "a\rb", "back\\slash", ""])
def test_header_values_sbatch_cannot_carry_are_refused(bad: str) -> None:
    with pytest.raises(HelixflowError, match="#SBATCH"):
        header(output=bad).lines()


def test_header_values_with_spaces_quotes_and_dollars_are_quoted() -> None:
    path = "/scratch/my dir;$(touch /tmp/x)'q\"#1/50%/slurm.out"
    lines = header(output=literal_filename(path), account="lab a").lines()
    assert f"#SBATCH --output={shlex.quote(path.replace('%', '%%'))}" in lines
    assert "#SBATCH --account='lab a'" in lines


def test_job_spec_validation() -> None:
    with pytest.raises(ValueError, match="plain file name"):
        JobSpec(name="j", commands=[["true"]], inputs={"../x": Path("/etc/passwd")})
    with pytest.raises(ValueError, match="plain file name"):
        JobSpec(name="j", commands=[["true"]], outputs=["sub/x"])
    with pytest.raises(ValueError, match="job name"):
        JobSpec(name="a b", commands=[["true"]])
    with pytest.raises(ValueError, match="neither commands nor a script"):
        JobSpec(name="j")
    with pytest.raises(ValueError, match="environment variable"):
        JobSpec(name="j", commands=[["true"]], env={"A B": "x"})


def test_job_name_carries_run_id() -> None:
    assert job_name("0b1c-22", "md 1") == "hf-0b1c-22-md-1"


def test_format_minutes() -> None:
    assert format_minutes(1) == "0-00:01:00"
    assert format_minutes(61) == "0-01:01:00"
    assert format_minutes(24 * 60 + 5) == "1-00:05:00"


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


def test_backoff_schedule() -> None:
    it = backoff(1.0, 2.0, 10.0)
    assert [next(it) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    flat = backoff(0.5, 1.0, 0.5)
    assert [next(flat) for _ in range(3)] == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError):
        next(backoff(0, 2, 1))


def test_error_carries_stderr_tail_and_hint() -> None:
    err = SlurmJobFailed("md", "12", "OUT_OF_MEMORY", exit_code=137, stderr_tail="oom-kill\n")
    assert "job md (Slurm job 12) ended OUT_OF_MEMORY, exit code 137" in str(err)
    assert "oom-kill" in str(err) and "mem_mb" in (err.hint or "")
    import pickle
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.stderr_tail == "oom-kill\n"


def test_ssh_argv_quotes_the_remote_command() -> None:
    target = SshTarget(host="login.hpc", user="ana", port=2222, key_path="/k/id_ed25519",
                       options=("StrictHostKeyChecking=yes",))
    argv = target.remote(["sbatch", "--parsable", "/scratch/r 1/job.sh"])
    assert argv[:5] == ["ssh", "-o", "BatchMode=yes", "-p", "2222"]
    assert argv[5:7] == ["-i", "/k/id_ed25519"]
    assert argv[-3:] == ["ana@login.hpc", "--", "sbatch --parsable '/scratch/r 1/job.sh'"]
    assert shlex.split(argv[-1]) == ["sbatch", "--parsable", "/scratch/r 1/job.sh"]
    hostile = target.remote(["cat", "$(whoami); rm -rf /"])
    assert shlex.split(hostile[-1]) == ["cat", "$(whoami); rm -rf /"]
    push = target.rsync_push("/tmp/stage/", "/scratch/run 1")
    assert push[:5] == ["rsync", "-a", "-s", "--mkpath", "-e"]
    assert shlex.split(push[5])[:3] == ["ssh", "-o", "BatchMode=yes"]
    assert push[-2:] == ["/tmp/stage/", "ana@login.hpc:/scratch/run 1/"]  # -s: no quoting
    pull = target.rsync_pull("/scratch/run 1/0/out.txt", "/tmp/out.txt")
    assert pull[-2:] == ["ana@login.hpc:/scratch/run 1/0/out.txt", "/tmp/out.txt"]


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
