"""The trial backend: starts, watches and stops trial processes on this machine's devices.

Each trial is ``aam-search train --config trial.yaml --out DIR`` in a child process: under
``accelerate launch`` when it gets several GPUs (or a DeepSpeed config), directly on CPU or one
GPU. Children get a clean environment (no leftover MLflow run, Accelerate or torch.distributed
variables, no store credentials), their own devices and main-process port, and their output
goes to ``DIR/trial.log``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aam_search.protocol import CONFIG_FILE, LOG_FILE, METRICS_FILE, RESULT_FILE, Status, read_new_metrics
from aam_search.redact import secrets
from aam_search.search.config import TRACKING_URI_ENV

# Variables a parent may carry that must never reach a trial: a trial must not join the
# parent's MLflow run, inherit DeepSpeed/Accelerate state, or a torch.distributed world.
LEAKY_PREFIXES = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT", "ACCELERATE_", "DEEPSPEED_", "TORCHELASTIC_")
LEAKY_NAMES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "GROUP_RANK", "ROLE_RANK", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")
# A trial reports only through its folder: it never talks to the tracking server or the study
# storage, so their credentials stay with the orchestrator (a trial's plug-in, log or crash
# dump never sees them). Any variable whose value is a URL carrying a secret goes too.
CREDENTIAL_NAMES = (TRACKING_URI_ENV, "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                    "MLFLOW_TRACKING_CLIENT_CERT_PATH", "PGPASSWORD", "PGPASSFILE", "MYSQL_PWD")


def _parent_death_signal():
    """A ``preexec_fn`` that has the kernel SIGTERM the trial when its orchestrator dies.

    Trials run in their own session (so a terminal's Ctrl-C reaches only the orchestrator,
    which stops them in order); without this, a worker killed with SIGKILL (OOM killer,
    ``kill -9``, a preempted node) would leave its trials training, unwatched, for hours.
    Linux only; elsewhere ``None``.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def set_death_signal() -> None:  # runs in the child between fork and exec
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return set_death_signal


def clean_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for key, value in list(env.items()):
        if (key in LEAKY_NAMES or key.startswith(LEAKY_PREFIXES) or key in CREDENTIAL_NAMES
                or ("://" in value and secrets(value))):
            del env[key]
    return env


def detect_gpus() -> list[int]:
    """GPU indices this worker may use: CUDA_VISIBLE_DEVICES if set, else all it sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [int(x) for x in visible.split(",") if x.strip().isdigit()]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:
        return []


@dataclass
class Slot:
    """Devices for one running trial: GPU ids (empty on CPU) and CPU threads."""

    gpus: list[int]
    threads: int
    port: int


def usable_cores() -> int:
    """CPUs this process may run on: a SLURM job or ``taskset`` gets fewer than the host has."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class DevicePool:
    def __init__(self, *, gpus: list[int], gpus_per_trial: int, max_parallel: int, base_port: int):
        cores = usable_cores()
        if gpus:
            if gpus_per_trial > len(gpus):
                raise ValueError(f"gpus_per_trial={gpus_per_trial} but only {len(gpus)} GPU(s) visible")
            groups = [gpus[i : i + gpus_per_trial] for i in range(0, len(gpus) - gpus_per_trial + 1, gpus_per_trial)]
            threads = max(1, cores // len(groups))
        else:
            groups = [[] for _ in range(max_parallel)]
            threads = max(1, cores // max_parallel)  # CPU trials split the cores
        self.free = [Slot(group, threads, base_port + i) for i, group in enumerate(groups)]
        self.capacity = len(self.free)

    def take(self) -> Slot | None:
        return self.free.pop(0) if self.free else None

    def give_back(self, slot: Slot) -> None:
        if slot in self.free:  # the members of one stacked process each hand back its one slot
            return
        self.free.append(slot)
        self.free.sort(key=lambda s: s.port)


@dataclass
class RunningTrial:
    number: int
    out_dir: Path
    process: subprocess.Popen
    slot: Slot
    started: float
    timeout_s: float
    log: Any
    metrics: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None
    metrics_offset: int = 0  # bytes of metrics.jsonl already read: each poll reads only what is new

    @property
    def elapsed(self) -> float:
        return time.time() - self.started

    def poll_metrics(self) -> list[dict[str, Any]]:
        """New epoch lines since the last poll; a line still being written waits for its newline."""
        new, self.metrics_offset = read_new_metrics(self.out_dir / METRICS_FILE, self.metrics_offset)
        self.metrics.extend(new)
        return new

    def finished(self) -> bool:
        return self.process.poll() is not None

    def pruned_meanwhile(self) -> bool:
        """Whether this run's own result.json (written since it started) says ``pruned``: a
        stack member that left its stack at a rung while the process trains the others."""
        path = self.out_dir / RESULT_FILE
        try:
            if path.stat().st_mtime < self.started:
                return False  # an earlier run's, not yet cleared
            return json.loads(path.read_text()).get("status") == Status.PRUNED
        except (OSError, json.JSONDecodeError, AttributeError):
            return False

    def stop(self, reason: str, grace_s: float = 10.0) -> None:
        """SIGTERM (the trial writes result.json), then SIGKILL after a grace period."""
        self.stop_reason = reason
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def outcome(self) -> tuple[str, str | None, dict[str, Any] | None]:
        """(status, reason, result) once the process has exited."""
        self.log.close()
        code = self.process.returncode
        result = None
        result_path = self.out_dir / RESULT_FILE
        if result_path.is_file():
            try:
                result = json.loads(result_path.read_text())
            except json.JSONDecodeError:
                result = None
        if self.stop_reason:
            return "stopped", self.stop_reason, result
        if result is None:
            tail = _tail(self.out_dir / LOG_FILE)
            return "failed", f"exit code {code} without result.json; log tail: {tail}", None
        if result.get("status") != Status.COMPLETED:
            return "failed", f"{result.get('status')}: {result.get('reason')}", result
        if code != 0:
            return "failed", f"exit code {code} after writing a completed result", result
        return "completed", None, result


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def trial_command(config_path: Path, out_dir: Path, slot: Slot, deepspeed: bool,
                  train_args: list[str] | None = None) -> list[str]:
    """The trial's command line; ``train_args`` replace ``train --config --out`` (a stack).

    One process (CPU or one GPU, no DeepSpeed) runs the trainer directly: the launcher would
    only start a second Python that imports torch (about 2 s a trial) to set variables the
    trainer does not need (it picks bf16 on CUDA itself, ``runtime.make_accelerator``).
    """
    train = ["-m", "aam_search.cli",
             *(train_args or ["train", "--config", str(config_path), "--out", str(out_dir)])]
    if len(slot.gpus) <= 1 and not deepspeed:
        return [sys.executable, *train]
    launch = [sys.executable, "-m", "accelerate.commands.launch",
              "--num_processes", str(max(1, len(slot.gpus))),
              "--main_process_port", str(slot.port), "--num_machines", "1", "--dynamo_backend", "no"]
    if slot.gpus:
        launch += ["--mixed_precision", "bf16"]
        if len(slot.gpus) > 1:
            launch += ["--multi_gpu"]
    if deepspeed:
        launch += ["--use_deepspeed"]
    return [*launch, *train]


def start_trial(number: int, config: dict[str, Any], out_dir: Path, slot: Slot, timeout_s: float) -> RunningTrial:
    config_path = write_trial_config(config, out_dir)
    log = open(out_dir / LOG_FILE, "ab")
    command = trial_command(config_path, out_dir, slot, deepspeed=bool(config.get("deepspeed")))
    process = spawn_trial(command, log, slot)
    return RunningTrial(number, out_dir, process, slot, time.time(), timeout_s, log)


def write_trial_config(config: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / CONFIG_FILE
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config_path


def spawn_trial(command: list[str], log: Any, slot: Slot) -> subprocess.Popen:
    """Start a trial process on ``slot`` writing to ``log`` (closed here if it cannot start)."""
    env = clean_environment()
    env["OMP_NUM_THREADS"] = str(slot.threads)
    env["PYTHONUNBUFFERED"] = "1"
    if slot.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in slot.gpus)
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU slot must not grab a GPU
    try:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,  # its own process group: stopping it stops its ranks too
            preexec_fn=_parent_death_signal(),  # and it dies with this process
        )
    except BaseException:
        log.close()
        raise
