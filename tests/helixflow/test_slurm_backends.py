"""The SSH transport: ssh and rsync argv, the remote command quoted."""

from __future__ import annotations

import shlex

from helixflow.slurm_backends import SshTarget


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
