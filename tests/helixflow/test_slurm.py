"""Batch jobs: spec validation, the failure error (stderr tail, hint, pickling)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helixflow.slurm import JobSpec, SlurmJobFailed


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


def test_error_carries_stderr_tail_and_hint() -> None:
    err = SlurmJobFailed("md", "12", "OUT_OF_MEMORY", exit_code=137, stderr_tail="oom-kill\n")
    assert "job md (Slurm job 12) ended OUT_OF_MEMORY, exit code 137" in str(err)
    assert "oom-kill" in str(err) and "mem_mb" in (err.hint or "")
    import pickle
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.stderr_tail == "oom-kill\n"
