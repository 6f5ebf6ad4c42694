"""SSH mode for real: a real OpenSSH server on loopback in front of the real one-node Slurm
cluster (deployments/slurm/local-cluster.sh). sbatch/squeue/scancel run through `ssh`, job
files go up and outputs come back with rsync over SSH. Same machine, so the "remote" scratch
is simply another directory than the local staging one."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from helixflow.blocks.slurm import SlurmCluster
from helixflow.flows.slurm import run_slurm_jobs
from helixflow.slurm import JobSpec, SlurmJobFailed, parse_scontrol
from helixflow.slurm_jobs import run_jobs
from helixflow.store import Store
from tests.conftest import free_port, missing, require_tool, stop_process
from tests.flows.test_slurm import cancel_and_wait, start_sleeper

pytestmark = pytest.mark.integration

SSHD = Path("/usr/sbin/sshd")
CLIENT_OPTIONS = ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "LogLevel=ERROR",
                  "ConnectTimeout=10"]


@dataclass(frozen=True)
class SshServer:
    """A running sshd: its port, the client key that logs in as root, and its log."""

    port: int
    key_path: Path
    log: Path

    @property
    def private_key(self) -> str:
        return self.key_path.read_text()

    def ssh_argv(self, command: str) -> list[str]:
        """`ssh ... root@127.0.0.1 command` with this server's key and port."""
        argv = ["ssh", "-o", "BatchMode=yes", "-i", str(self.key_path), "-p", str(self.port)]
        for opt in CLIENT_OPTIONS:
            argv += ["-o", opt]
        return [*argv, "root@127.0.0.1", command]

    def logins(self) -> int:
        """How many public-key logins sshd accepted so far."""
        return self.log.read_text(errors="replace").count("Accepted publickey for root")


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real sshd (Debian openssh-server) as root on a free loopback port, own config."""
    if not SSHD.exists():
        missing("external tool 'sshd' at /usr/sbin/sshd (run scripts/install-system-deps.sh "
                "as root)")
    for tool in ("ssh", "ssh-keygen", "rsync"):
        require_tool(tool)
    if os.geteuid() != 0:
        missing("root (sshd must run as root to log in as root)")
    base = tmp_path_factory.mktemp("sshd")
    host_key, client_key = base / "host_ed25519", base / "client_ed25519"
    _keygen(host_key)
    _keygen(client_key)
    authorized = base / "authorized_keys"
    authorized.write_text(Path(f"{client_key}.pub").read_text())
    authorized.chmod(0o600)
    port = free_port()
    config = base / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized}",
        f"PidFile {base / 'sshd.pid'}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "StrictModes no",
        "UsePAM no",
        "MaxStartups 50:30:100",
        "MaxSessions 50",
        "",
    ]))
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privilege separation
    log = base / "sshd.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([str(SSHD), "-D", "-f", str(config), "-e"],
                                stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    server = SshServer(port, client_key, log)
    try:
        deadline = time.monotonic() + 30
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.1)
                continue
            probe = subprocess.run(server.ssh_argv("true"), capture_output=True, text=True,
                                   timeout=30, check=False)
            if probe.returncode == 0:
                ready = True
                break
            time.sleep(0.2)
        if not ready:
            pytest.fail(f"sshd did not accept logins on port {port}:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        yield server
    finally:
        stop_process(proc)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "store"))


@pytest.fixture
def slurm_over_ssh(slurm_cluster: str, sshd: SshServer) -> SshServer:
    """The cluster and the SSH server, with sbatch reachable on the login node."""
    require_tool("sbatch")
    probe = subprocess.run(sshd.ssh_argv("command -v sbatch squeue scancel"),
                           capture_output=True, text=True, timeout=30, check=False)
    assert probe.returncode == 0, f"Slurm commands not on the login node's PATH: {probe.stderr}"
    return sshd


def ssh_cluster(server: SshServer, tmp_path: Path, *, secret: bool = False,
                **kw: object) -> SlurmCluster:
    """A `mode="ssh"` block reaching root@127.0.0.1; remote scratch and local staging apart."""
    settings: dict[str, object] = dict(
        mode="ssh", ssh_host="127.0.0.1", ssh_port=server.port, ssh_user="root",
        ssh_options=list(CLIENT_OPTIONS), scratch_dir=str(tmp_path / "remote-scratch"),
        local_staging_dir=str(tmp_path / "staging"), poll_interval=0.2, poll_backoff=1.5,
        poll_max_interval=1.0, sentinel_timeout=5.0, default_mem_mb=100, default_time_limit=5,
    )
    if secret:
        settings["ssh_private_key"] = SecretStr(server.private_key)
    else:
        settings["ssh_key_path"] = str(server.key_path)
    settings.update(kw)
    return SlurmCluster(**settings)  # type: ignore[arg-type]


def scontrol(job_id: str) -> dict[str, str]:
    proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                          text=True, check=False, timeout=30)
    return parse_scontrol(proc.stdout) if proc.returncode == 0 else {}


def key_fragments(private_key: str) -> list[str]:
    """The key text and each of its base64 lines: none may show up anywhere."""
    body = [line for line in private_key.splitlines() if len(line) > 16 and "-----" not in line]
    return [private_key.strip(), *body]


def leaked(text: str, fragments: list[str]) -> bool:
    return any(f in text for f in fragments)


def test_array_over_ssh_stages_runs_in_slurm_and_publishes(
    prefect_api: str, slurm_over_ssh: SshServer, tmp_path: Path, store: Store,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    server = slurm_over_ssh
    src = tmp_path / "in.txt"
    src.write_text("from the store\n")
    ref = store.publish(src, run_id="r-ssh-array", stage="inputs", move=False).ref()
    script = ('cat in.txt > out.txt; echo "task $0" >> out.txt; pwd >> out.txt; '
              'echo "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" >> out.txt')
    jobs = [JobSpec(name=f"copy-{i}", commands=[["bash", "-c", script, str(i)]],
                    inputs={"in.txt": ref}, outputs=["out.txt"]) for i in range(2)]
    cluster = ssh_cluster(server, tmp_path, secret=True, keep_scratch=True)
    remote_scratch = tmp_path / "remote-scratch"
    staging = tmp_path / "staging"
    temp_keys_before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("helixflow-ssh-*"))
    logins_before = server.logins()

    start = time.monotonic()
    state = run_slurm_jobs(jobs, cluster=cluster, store=store.url, run_id="r-ssh-array",
                           stage="sim", return_state=True)
    elapsed = time.monotonic() - start
    results = state.result()

    assert [r.state for r in results] == ["COMPLETED"] * 2
    assert [r.exit_code for r in results] == [0, 0]
    assert len({r.job_id.split("_")[0] for r in results}) == 1, "two similar jobs: one array"
    for i, result in enumerate(results):
        assert result.job_dir.startswith(str(remote_scratch / "r-ssh-array") + "/")
        art = result.outputs["out.txt"]
        assert art.uri == store.run_uri("r-ssh-array", "sim", f"copy-{i}", "out.txt")
        lines = store.read_bytes(art.uri).decode().splitlines()
        # input staged from the store, ran in the remote job directory, inside Slurm
        assert lines == ["from the store", f"task {i}", result.job_dir, result.job_id]
        info = scontrol(result.job_id)
        assert info.get("JobState") == "COMPLETED", info
        assert info.get("JobName", "").startswith("hf-r-ssh-array-copy-0-array2")
        assert info.get("StdOut") == f"{result.job_dir}/slurm.out"
        # rsync put the job files in the remote scratch (kept: keep_scratch)
        remote_dir = Path(result.job_dir)
        assert (remote_dir / "in.txt").read_text() == "from the store\n"
        assert (remote_dir / "job.sh").is_file() and (remote_dir / ".exitcode").read_text() == "0\n"
        assert (remote_dir.parent / "array.sh").is_file()
    # the local staging mirror is a different tree; outputs were pulled back into it
    [local_out0] = staging.rglob("0/out.txt")
    assert local_out0.read_text() == (Path(results[0].job_dir) / "out.txt").read_text()
    assert not local_out0.samefile(Path(results[0].job_dir) / "out.txt")
    assert server.logins() - logins_before >= 4, "sbatch, squeue and rsync went through sshd"
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("helixflow-ssh-*")) <= \
        temp_keys_before, "the key file written from the secret is removed"

    # secrets: the private key is nowhere in scripts, job files, logs or parameters
    fragments = key_fragments(server.private_key)
    for tree in (remote_scratch, staging):
        for path in tree.rglob("*"):
            if path.is_file():
                assert not leaked(path.read_text(errors="replace"), fragments), path
    APILogWorker.drain_all(timeout=10)
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        flow_run = client.read_flow_run(flow_run_id)
    assert any("submitted 2 job(s)" in log.message for log in logs)
    assert not leaked("\n".join(log.message for log in logs), fragments)
    assert not leaked(repr(flow_run.parameters), fragments)
    captured = capfd.readouterr()
    assert not leaked(captured.out + captured.err, fragments)
    print(f"2-task array over SSH: submit to COMPLETED + published in {elapsed:.1f} s")


def test_key_file_run_cleans_both_scratch_trees_after_success(
    slurm_over_ssh: SshServer, tmp_path: Path, store: Store
) -> None:
    jobs = [JobSpec(name="hello", commands=[["bash", "-c", "hostname > host.txt"]],
                    outputs=["host.txt"])]
    cluster = ssh_cluster(slurm_over_ssh, tmp_path)  # ssh_key_path, keep_scratch=False
    [result] = run_jobs(jobs, cluster, store, "r-ssh-clean")
    assert result.state == "COMPLETED"
    assert store.read_bytes(result.outputs["host.txt"].uri).decode().strip() == \
        socket.gethostname()
    assert scontrol(result.job_id).get("JobState") == "COMPLETED"
    assert not Path(result.job_dir).exists(), "remote job directory removed (rm -rf over ssh)"
    assert not any(p.is_file() for p in (tmp_path / "staging").rglob("*")), \
        "local staging removed"


def test_failure_over_ssh_surfaces_stderr(
    slurm_over_ssh: SshServer, tmp_path: Path, store: Store
) -> None:
    jobs = [JobSpec(name="boom", commands=[
        ["bash", "-c", "echo working; echo 'disk on fire: /dev/sdz' >&2; exit 3"]])]
    cluster = ssh_cluster(slurm_over_ssh, tmp_path)
    with pytest.raises(SlurmJobFailed) as info:
        run_jobs(jobs, cluster, store, "r-ssh-fail")
    err = info.value
    assert err.state == "FAILED" and err.exit_code == 3
    assert "disk on fire: /dev/sdz" in str(err)
    assert "working" not in err.stderr_tail
    details = scontrol(err.job_id)
    assert details.get("JobState") == "FAILED" and details.get("ExitCode") == "3:0", details
    # kept on failure, on the remote side
    [stderr_file] = (tmp_path / "remote-scratch" / "r-ssh-fail").rglob("slurm.err")
    assert "disk on fire" in stderr_file.read_text()


def test_cancelling_the_flow_run_scancels_over_ssh(
    prefect_api: str, slurm_over_ssh: SshServer, tmp_path: Path, store: Store
) -> None:

    name = f"ssh-cancel-{uuid.uuid4().hex[:8]}"
    thread, outcome, job_id = start_sleeper(name, ssh_cluster(slurm_over_ssh, tmp_path), store)
    logins_before = slurm_over_ssh.logins()
    latency = cancel_and_wait(name, job_id)
    thread.join(timeout=60)
    state = outcome["state"]
    assert state.is_cancelled(), state  # type: ignore[attr-defined]
    assert slurm_over_ssh.logins() > logins_before, "scancel went through sshd"
    print(f"cancel over SSH → job left the running states in {latency:.2f} s")
