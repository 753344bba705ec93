"""A throwaway one-node SLURM cluster on this machine, from Debian's ``slurm-wlm`` and ``munge``.

The ``slurm`` fixture writes a minimal ``slurm.conf`` for this host (its real CPUs and memory,
as ``slurmd -C`` reports them; controller and node on 127.0.0.1, free ports), starts its own
``munged`` (own key and socket), ``slurmctld`` and ``slurmd`` in the foreground as children
of the test, waits until the node is idle and yields a :class:`Cluster`. At teardown it
cancels every job, stops the three daemons and kills whatever the jobs left (everything that
carries this cluster's ``SLURM_CONF``), even when the test failed.

The configuration needs no cgroups and no accounting database (``proctrack/linuxproc``,
``task/affinity``, ``jobacct_gather/none``), so it runs in a container as root. Without the
packages the test is skipped locally and fails in CI (``.ci/run`` installs them); when a
daemon cannot start here, the test is skipped with that daemon's own error.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

INSTALL_HINT = "install Debian's slurm-wlm and munge: apt-get install slurm-wlm munge"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
START_S = 30
# What a controller with an empty state folder logs as errors on every start.
NOISE = re.compile(r"state file|Trying backup state|mpi/pmix|PMIx|MPI: Cannot create context")
# Job states after which a job never runs again (squeue/scontrol names).
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE"}


class ClusterUnavailable(RuntimeError):
    """A daemon did not start, or the node never became idle (the message holds its error)."""


def binary(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name)
                                       if p.is_file() and os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_line(slurmd: str) -> tuple[str, str]:
    """This host's node name and its ``NodeName=... CPUs=... RealMemory=...`` definition."""
    result = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=30)
    line = next((part for part in result.stdout.splitlines() if part.startswith("NodeName=")), None)
    if result.returncode != 0 or line is None:
        raise ClusterUnavailable(f"slurmd -C failed ({result.returncode}): {(result.stderr or result.stdout)[-1000:]}")
    return line.split()[0].removeprefix("NodeName="), line


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.bin = {name: binary(name) for name in DAEMONS + CLIENTS}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.processes: dict[str, subprocess.Popen] = {}
        self.node = ""

    # ---------------------------------------------------------------- set-up
    def write_config(self) -> None:
        self.node, node = node_line(self.bin["slurmd"])
        root = self.root
        for folder in ("state", "spool", "munge"):
            (root / folder).mkdir()
        (root / "munge").chmod(0o755)  # munged wants its socket's folder searchable by all
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        settings = {
            "ClusterName": "aamtest",
            "SlurmctldHost": f"{self.node}(127.0.0.1)",
            "SlurmctldPort": free_port(),
            "SlurmdPort": free_port(),
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={root / 'munge' / 'munge.socket'}",
            "StateSaveLocation": root / "state",
            "SlurmdSpoolDir": root / "spool",
            "SlurmctldPidFile": root / "slurmctld.pid",
            "SlurmdPidFile": root / "slurmd.pid",
            "SlurmctldLogFile": root / "slurmctld.log",
            "SlurmdLogFile": root / "slurmd.log",
            # no cgroups, no accounting: runs in a container
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/affinity",  # binds a job to its CPUs (sched_setaffinity, no cgroups)
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "JobCompType": "jobcomp/none",
            "MpiDefault": "none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core",  # one CPU per job: array tasks share the node
            "ReturnToService": 2,
            "KillWait": 5,
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        lines += [f"{node} NodeAddr=127.0.0.1 State=UNKNOWN",
                  f"PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP"]
        self.conf.write_text("\n".join(lines) + "\n")

    def _daemon(self, name: str, *args: str) -> None:
        log = open(self.root / f"{name}.out", "wb")
        try:
            self.processes[name] = subprocess.Popen([self.bin[name], *args], stdout=log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        finally:
            log.close()

    def errors(self, daemon: str | None = None) -> str:
        """The error lines of ``daemon``'s log and output (or of every daemon's), for a skip or
        a failure; a fresh controller's notes about missing state files are left out."""
        names = [daemon] if daemon else list(DAEMONS)
        found = []
        for name in names:
            for path in (self.root / f"{name}.log", self.root / "munge" / f"{name}.log", self.root / f"{name}.out"):
                if not path.is_file():
                    continue
                lines = [line.strip() for line in path.read_text(errors="replace").splitlines()
                         if ("error" in line.lower() or "fatal" in line.lower()) and not NOISE.search(line)]
                if lines:
                    found.append(f"{path.name}: " + " | ".join(dict.fromkeys(lines[-6:])))
                    break  # the log, else the output: the same lines twice say nothing new
        return "; ".join(found)[-3000:] or "(no error in the daemons' logs)"

    def start(self) -> None:
        self.write_config()
        munge = self.root / "munge"
        self._daemon("munged", "--foreground", f"--key-file={munge / 'munge.key'}",
                     f"--socket={munge / 'munge.socket'}", f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                     f"--seed-file={munge / 'munged.seed'}")
        self._wait(lambda: (munge / "munge.socket").exists(), "munged's socket")
        self._daemon("slurmctld", "-D", "-f", str(self.conf))
        self._daemon("slurmd", "-D", "-f", str(self.conf), "-N", self.node)
        self._wait(lambda: self.node_state() == "idle", f"node {self.node} to be idle")

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise ClusterUnavailable(f"{name} exited with {process.returncode}: {self.errors(name)}")
            if ready():
                return
            time.sleep(0.3)
        raise ClusterUnavailable(f"timed out after {START_S}s waiting for {what} (state "
                                 f"{self.node_state() or 'unknown'}): {self.errors()}")

    def node_state(self) -> str:
        result = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T", check=False)
        return result.stdout.strip().rstrip("*~#!%$@^-") if result.returncode == 0 else ""

    # ---------------------------------------------------------------- use
    def run(self, command: str, *args: str, check: bool = True, env: dict[str, str] | None = None,
            cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        result = subprocess.run([self.bin[command], *args], capture_output=True, text=True, timeout=timeout,
                                env=env or self.env, cwd=cwd)
        if check and result.returncode != 0:
            raise RuntimeError(f"{command} {' '.join(args)} failed ({result.returncode}): "
                               f"{result.stderr.strip() or result.stdout.strip()}")
        return result

    def sbatch(self, script: Path, *options: str, env: dict[str, str], cwd: Path) -> str:
        """Submit ``script`` from ``cwd`` with ``env`` (plus this cluster's SLURM_CONF); its job id."""
        result = self.run("sbatch", "--parsable", *options, str(script), env={**env, "SLURM_CONF": str(self.conf)},
                          cwd=cwd)
        return result.stdout.strip().split(";")[0]

    def job_states(self, job: str) -> dict[str, tuple[str, str]]:
        """``{job or array task id: (state, exit code)}`` (finished jobs stay listed for MinJobAge, 300 s)."""
        result = self.run("scontrol", "-o", "show", "job", job)
        states = {}
        for line in result.stdout.splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            task = fields.get("ArrayTaskId")
            states[f"{fields['JobId']}" if task is None else f"{fields.get('ArrayJobId')}_{task}"] = (
                fields.get("JobState", "?"), fields.get("ExitCode", "?"))
        return states

    def wait_job(self, job: str, timeout: float) -> dict[str, tuple[str, str]]:
        """Wait until every task of ``job`` has ended; their states (fails on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.job_states(job)
            if states and all(state in ENDED for state, _ in states.values()):
                return states
            if time.monotonic() > deadline:
                pytest.fail(f"SLURM job {job} still not done after {timeout:.0f}s: {states}")
            time.sleep(1.0)

    # ---------------------------------------------------------------- teardown
    def stop(self) -> None:
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            jobs = self.run("squeue", "-h", "-o", "%A", check=False).stdout.split()
            if jobs:
                self.run("scancel", *sorted(set(jobs)), check=False)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and self.run("squeue", "-h", "-o", "%A", check=False).stdout.strip():
                    time.sleep(0.5)
        for name in reversed(DAEMONS):
            process = self.processes.get(name)
            if process is None:
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)
        self.kill_leftovers()

    def leftovers(self) -> list[psutil.Process]:
        """Live processes of this cluster's jobs: they carry its SLURM_CONF, or name its folder."""
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            try:
                if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
                    continue
                if any(str(self.root) in part for part in proc.info["cmdline"] or []) \
                        or proc.environ().get("SLURM_CONF") == str(self.conf):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def kill_leftovers(self) -> None:
        procs = self.leftovers()
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)


def require_slurm() -> None:
    missing = [name for name in DAEMONS + CLIENTS if binary(name) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the SLURM test, but {', '.join(missing)} is missing; .ci/run installs "
                        "slurm-wlm and munge with apt-get")
        pytest.skip(f"{', '.join(missing)} not found; {INSTALL_HINT}")
    if os.geteuid() != 0:
        pytest.skip("the one-node SLURM cluster runs slurmd and slurmctld as root (SlurmdUser=root)")


@pytest.fixture
def slurm() -> Iterator[Cluster]:
    """A one-node SLURM cluster on this host (see the module docstring)."""
    require_slurm()
    # Not pytest's tmp_path: munged wants every folder above its socket searchable.
    root = Path(tempfile.mkdtemp(prefix="aam-slurm-"))
    root.chmod(0o755)
    cluster = Cluster(root)
    try:
        try:
            cluster.start()
        except ClusterUnavailable as error:
            pytest.skip(f"no SLURM cluster on this machine: {error}")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
