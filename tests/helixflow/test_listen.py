"""No open doors: every port helixflow opens on its own — the local Prefect server, and a
local Ray cluster (no dashboard; GCS, raylet, workers, agents) — listens on the loopback
interface only. Read from /proc/net/tcp{,6}, mapped to processes through /proc/<pid>/fd."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest
from prefect import flow, task

from tests.conftest import descendants, missing

pytestmark = pytest.mark.integration

_LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


def _address(hex_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_ip)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    # /proc prints IPv6 as four host-order 32-bit words
    words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
    return ipaddress.IPv6Address(b"".join(words))


def listening_sockets() -> dict[int, tuple[str, int]]:
    """socket inode → (address, port) of every TCP socket in LISTEN state."""
    out: dict[int, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != _LISTEN:
                continue
            hex_ip, hex_port = fields[1].split(":")
            out[int(fields[9])] = (str(_address(hex_ip)), int(hex_port, 16))
    return out


def listening_of(pids: set[int]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening socket the processes hold."""
    sockets = listening_sockets()
    out = []
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in sockets:
                    out.append((name, *sockets[inode]))
    return sorted(set(out))


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)


@task
def _pid() -> int:
    return os.getpid()


def test_prefect_server_and_local_ray_listen_on_loopback_only(
    prefect_api: str, helixflow_home: Path
) -> None:
    if not Path("/proc/net/tcp").exists():
        missing("/proc/net/tcp (Linux procfs)")
    from helixflow.app.server import ensure_server
    from helixflow.runner import build_task_runner

    server = ensure_server(helixflow_home)
    seen: dict[str, list[tuple[str, str, int]]] = {}

    @flow(task_runner=build_task_runner(prefect_api))
    def probe() -> int:
        worker = _pid.submit().result()
        ours = {os.getpid()} | descendants(os.getpid())
        seen["ray"] = listening_of(ours - {server.pid} - descendants(server.pid))
        return worker

    worker_pid = probe()
    seen["server"] = listening_of({server.pid} | descendants(server.pid))

    ray = seen["ray"]
    names = {name for name, _, _ in ray}
    assert {"gcs_server", "raylet"} <= names, ray  # the probe saw the Ray cluster's servers
    assert worker_pid != os.getpid()
    assert ("127.0.0.1", server.port) in {(a, p) for _, a, p in seen["server"]}, seen["server"]
    open_doors = [s for s in ray + seen["server"] if not is_loopback(s[1])]
    assert not open_doors, f"listening beyond loopback: {open_doors}"
    # and the server is not reachable on this machine's other addresses
    others = {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None,
                                                             socket.AF_INET)}
    for address in sorted(a for a in others if not is_loopback(a))[:1]:
        with pytest.raises(OSError), socket.create_connection((address, server.port), 2):
            pass


def test_the_clis_ray_session_listens_on_loopback_only(prefect_api: str) -> None:
    """`helixflow run` starts Ray before the flow (launch._ray_session): same rule."""
    from helixflow.app.launch import _ray_session
    from helixflow.runner import build_task_runner

    with _ray_session(build_task_runner(prefect_api)):
        ray = listening_of(descendants(os.getpid()) | {os.getpid()})
    assert {"gcs_server", "raylet"} <= {name for name, _, _ in ray}, ray
    open_doors = [s for s in ray if not is_loopback(s[1])]
    assert not open_doors, f"listening beyond loopback: {open_doors}"
