"""Job scripts: #SBATCH header and quoting, sentinel, signal forwarding, arrays (run with bash)."""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

import pytest

from helixflow.errors import HelixflowError
from helixflow.slurm import JobSpec
from helixflow.slurm_scripts import (
    EXITCODE_FILE,
    SbatchOptions,
    array_spec,
    format_minutes,
    job_name,
    literal_filename,
    render_array_script,
    render_job_script,
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


def test_job_name_carries_run_id() -> None:
    assert job_name("0b1c-22", "md 1") == "hf-0b1c-22-md-1"


def test_format_minutes() -> None:
    assert format_minutes(1) == "0-00:01:00"
    assert format_minutes(61) == "0-01:01:00"
    assert format_minutes(24 * 60 + 5) == "1-00:05:00"
