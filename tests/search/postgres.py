"""A throwaway PostgreSQL cluster for tests, from Debian's ``postgresql`` package.

The ``postgres_url`` fixture runs ``initdb`` into a temporary folder, starts the server on a
free loopback port (unix socket in the same folder), creates database ``aam`` and yields
``postgresql+psycopg2://postgres@127.0.0.1:PORT/aam``; the cluster is stopped and removed
at teardown. PostgreSQL refuses to run as root, so as root the cluster belongs to the
``postgres`` system user the package creates.

Without the binaries the tests that need it are skipped locally, but fail in CI (env
``CI`` set): CI installs the package in ``.ci/run``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

INSTALL_HINT = "install Debian's postgresql package: apt-get install postgresql"


def find_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl."""
    candidates = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bindir = Path(initdb).parent
        if (bindir / "pg_ctl").is_file():
            try:
                version = float(bindir.parent.name)
            except ValueError:
                version = 0.0
            candidates.append((version, bindir))
    if candidates:
        return max(candidates)[1]
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    def __init__(self, bindir: Path, root: Path):
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        self.user = "postgres" if self.as_root else pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=120,
                                env={**os.environ, "LC_ALL": "C", "PGPORT": str(self.port)})
        if check and result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.is_file() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n"
                               f"{result.stdout}\n{result.stderr}\n{log}")
        return result

    def start(self) -> None:
        if self.as_root:
            if shutil.which("runuser") is None:
                raise RuntimeError("running as root needs runuser to start PostgreSQL as user postgres")
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("no 'postgres' system user; " + INSTALL_HINT) from None
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                  "--locale=C", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
        for attempt in range(3):
            result = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                               "-o", options, "start", check=False)
            if result.returncode == 0:
                break
            if attempt == 2:
                raise RuntimeError(f"pg_ctl start failed:\n{result.stdout}{result.stderr}\n"
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            old, self.port = self.port, free_port()  # the port was taken meanwhile: try another
            options = options.replace(f"-p {old} ", f"-p {self.port} ")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "aam")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/aam"


@pytest.fixture
def postgres_url():
    """URL of a fresh database in a throwaway PostgreSQL cluster (stopped at teardown)."""
    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL binaries (initdb, pg_ctl) not found under /usr/lib/postgresql; {INSTALL_HINT}")
        pytest.skip(INSTALL_HINT)
    try:
        import psycopg2  # noqa: F401  (the driver the URL names; in the dev extra)
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("pip install psycopg2-binary (in the dev extra)")
    # Not pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="aam-pg-"))
    cluster = Cluster(bindir, root)
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
