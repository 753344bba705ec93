"""The trial backend: clean environments, device slots, launch commands, process outcomes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from aam_search.search import backend
from aam_search.search.backend import DevicePool, Slot, clean_environment, start_trial, trial_command


def test_clean_environment_strips_what_would_leak_into_a_trial():
    dirty = {
        "PATH": "/usr/bin", "HOME": "/root", "MLFLOW_TRACKING_URI": "sqlite:///x.db",
        "MLFLOW_RUN_ID": "abc", "MLFLOW_EXPERIMENT_ID": "3", "MLFLOW_EXPERIMENT_NAME": "e",
        "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_MIXED_PRECISION": "bf16", "DEEPSPEED_ZERO_STAGE": "2",
        "TORCHELASTIC_RUN_ID": "r", "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "GROUP_RANK": "0",
        "CUDA_VISIBLE_DEVICES": "0,1", "OMP_NUM_THREADS": "16", "PRANKSTER": "keep", "MY_RANK": "keep",
    }
    clean = clean_environment(dirty)
    # The tracking server address is configuration, not a run: it stays.
    assert clean == {"PATH": "/usr/bin", "HOME": "/root", "MLFLOW_TRACKING_URI": "sqlite:///x.db",
                     "PRANKSTER": "keep", "MY_RANK": "keep"}
    assert "RANK" in dirty  # the input is not modified


def test_clean_environment_keeps_store_credentials_from_trials():
    dirty = {
        "PATH": "/usr/bin", "AAM_TRACKING_URI": "postgresql://u:hunter2@db/mlflow",
        "MLFLOW_TRACKING_PASSWORD": "hunter2", "MLFLOW_TRACKING_TOKEN": "hunter2", "PGPASSWORD": "hunter2",
        "MLFLOW_TRACKING_URI": "https://u:hunter2@mlflow.example.org", "OTHER_URL": "mysql://a:hunter2@h/db",
        "PLAIN_URL": "https://mlflow.example.org", "MLFLOW_TRACKING_USERNAME": "u",
    }
    clean = clean_environment(dirty)
    # A trial reports through its folder only: no secret of the tracking server or the storage
    # reaches it, while settings without a secret stay.
    assert "hunter2" not in json.dumps(clean)
    assert clean == {"PATH": "/usr/bin", "PLAIN_URL": "https://mlflow.example.org", "MLFLOW_TRACKING_USERNAME": "u"}


def test_clean_environment_defaults_to_this_process(monkeypatch):
    monkeypatch.setenv("MLFLOW_RUN_ID", "leaky")
    monkeypatch.setenv("MASTER_PORT", "1234")
    monkeypatch.setenv("AAM_TEST_KEEP", "1")
    env = clean_environment()
    assert "MLFLOW_RUN_ID" not in env and "MASTER_PORT" not in env
    assert env["AAM_TEST_KEEP"] == "1"
    assert os.environ["MLFLOW_RUN_ID"] == "leaky"


def test_cpu_pool_splits_cores_and_gives_distinct_ports(monkeypatch):
    monkeypatch.setattr(backend, "usable_cores", lambda: 8)
    pool = DevicePool(gpus=[], gpus_per_trial=1, max_parallel=4, base_port=30000)
    assert pool.capacity == 4
    slots = [pool.take() for _ in range(4)]
    assert pool.take() is None
    assert [s.gpus for s in slots] == [[], [], [], []]
    assert [s.threads for s in slots] == [2, 2, 2, 2]
    assert len({s.port for s in slots}) == 4
    pool.give_back(slots[2])
    pool.give_back(slots[0])
    assert pool.take().port == slots[0].port  # lowest port first
    # More trials than cores still get a thread each.
    monkeypatch.setattr(backend, "usable_cores", lambda: 2)
    assert {s.threads for s in DevicePool(gpus=[], gpus_per_trial=1, max_parallel=3, base_port=30000).free} == {1}


def test_usable_cores_follow_the_cpu_affinity():
    """Threads are split over the CPUs a job may use, not all the host has (SLURM, taskset)."""
    allowed = sorted(os.sched_getaffinity(0))
    script = (f"import os; os.sched_setaffinity(0, {{{allowed[0]}}}); "
              "from aam_search.search.backend import usable_cores; print(usable_cores())")
    pinned = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert pinned.stdout.strip() == "1"
    assert backend.usable_cores() == len(allowed)


def test_gpu_pool_groups_gpus_per_trial(monkeypatch):
    monkeypatch.setattr(backend, "usable_cores", lambda: 16)
    pool = DevicePool(gpus=[0, 1, 2, 3], gpus_per_trial=2, max_parallel=1, base_port=29500)
    assert [s.gpus for s in pool.free] == [[0, 1], [2, 3]]
    assert [s.threads for s in pool.free] == [8, 8]
    assert len({s.port for s in pool.free}) == 2
    # A leftover GPU that cannot hold a whole trial stays idle.
    assert [s.gpus for s in DevicePool(gpus=[0, 1, 2], gpus_per_trial=2, max_parallel=1, base_port=1).free] == [[0, 1]]
    with pytest.raises(ValueError, match="gpus_per_trial=3"):
        DevicePool(gpus=[0, 1], gpus_per_trial=3, max_parallel=1, base_port=29500)


def test_trial_command_runs_cpu_trials_directly(tmp_path):
    command = trial_command(tmp_path / "trial.yaml", tmp_path, Slot([], 2, 29501), deepspeed=False)
    assert command[:4] == [sys.executable, "-m", "aam_search.cli", "train"]
    assert "accelerate.commands.launch" not in command
    assert command[command.index("--config") + 1] == str(tmp_path / "trial.yaml")
    assert command[command.index("--out") + 1] == str(tmp_path)


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_trial_command_runs_a_one_gpu_trial_directly(tmp_path):
    one = trial_command(tmp_path / "t.yaml", tmp_path, Slot([3], 4, 29507), deepspeed=False)
    assert one[:4] == [sys.executable, "-m", "aam_search.cli", "train"]
    assert "accelerate.commands.launch" not in one
    # Under DeepSpeed the same slot still goes through the launcher.
    with_deepspeed = trial_command(tmp_path / "t.yaml", tmp_path, Slot([3], 4, 29507), deepspeed=True)
    assert with_deepspeed[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert _option(with_deepspeed, "--num_processes") == "1"
    assert _option(with_deepspeed, "--mixed_precision") == "bf16"
    assert "--use_deepspeed" in with_deepspeed and "--multi_gpu" not in with_deepspeed


def test_trial_command_launches_multi_gpu_trials_with_accelerate(tmp_path):
    two = trial_command(tmp_path / "t.yaml", tmp_path, Slot([0, 1], 4, 29508), deepspeed=False)
    assert two[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert _option(two, "--num_processes") == "2"
    assert _option(two, "--main_process_port") == "29508"
    assert "--multi_gpu" in two and "--use_deepspeed" not in two
    # The training command comes after the launcher's options.
    assert two.index("--main_process_port") < two.index("aam_search.cli")

    with_deepspeed = trial_command(tmp_path / "t.yaml", tmp_path, Slot([0, 1], 4, 29508), deepspeed=True)
    assert "--multi_gpu" in with_deepspeed and "--use_deepspeed" in with_deepspeed


def test_trial_command_uses_the_launcher_for_deepspeed_on_cpu(tmp_path):
    command = trial_command(tmp_path / "t.yaml", tmp_path, Slot([], 2, 29502), deepspeed=True)
    assert "accelerate.commands.launch" in command
    assert "--use_deepspeed" in command
    assert _option(command, "--num_processes") == "1"
    assert _option(command, "--main_process_port") == "29502"
    assert "--mixed_precision" not in command


# ---------------------------------------------------------------- processes

def fake_trial(monkeypatch, code: str) -> None:
    """Make start_trial run ``python -c code`` (with the trial folder as argv[1])."""
    def command(config_path, out_dir, slot, deepspeed):
        return [sys.executable, "-c", textwrap.dedent(code), str(out_dir)]

    monkeypatch.setattr(backend, "trial_command", command)


def wait_done(running, timeout: float = 30):
    deadline = time.time() + timeout
    while not running.finished():
        assert time.time() < deadline, "fake trial did not finish"
        time.sleep(0.05)
    return running.outcome()


def test_start_trial_gives_the_trial_a_clean_environment(monkeypatch, tmp_path):
    for key, value in {"MLFLOW_RUN_ID": "parent-run", "ACCELERATE_USE_DEEPSPEED": "true", "RANK": "3",
                       "MASTER_PORT": "1234", "OMP_NUM_THREADS": "64", "CUDA_VISIBLE_DEVICES": "0"}.items():
        monkeypatch.setenv(key, value)
    fake_trial(monkeypatch, """
        import json, os, sys
        from pathlib import Path
        Path(sys.argv[1], "env.json").write_text(json.dumps(dict(os.environ)))
        print("hello from the trial")
    """)
    out = tmp_path / "trial-0007"
    running = start_trial(7, {"seed": 0, "optim": {"epochs": 1}}, out, Slot([], 3, 29500), timeout_s=60)
    status, reason, result = wait_done(running)
    env = json.loads((out / "env.json").read_text())
    for key in ("MLFLOW_RUN_ID", "ACCELERATE_USE_DEEPSPEED", "RANK", "MASTER_PORT"):
        assert key not in env
    assert env["OMP_NUM_THREADS"] == "3"
    assert env["CUDA_VISIBLE_DEVICES"] == ""  # a CPU slot hides GPUs
    assert (out / "trial.yaml").read_text().startswith("seed: 0")
    log = (out / "trial.log").read_text()
    assert log.startswith("$ ") and "hello from the trial" in log
    assert (status, result) == ("failed", None)
    assert reason.startswith("exit code 0 without result.json")


def test_start_trial_gives_a_gpu_slot_its_devices(monkeypatch, tmp_path):
    fake_trial(monkeypatch, """
        import os, sys
        from pathlib import Path
        Path(sys.argv[1], "devices").write_text(os.environ["CUDA_VISIBLE_DEVICES"])
    """)
    running = start_trial(0, {}, tmp_path, Slot([2, 5], 4, 29500), timeout_s=60)
    wait_done(running)
    assert (tmp_path / "devices").read_text() == "2,5"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import sys; sys.exit(3)", ("failed", "exit code 3 without result.json")),
        ("W({'status': 'completed', 'reason': None, 'utility': 0.5})", ("completed", None)),
        ("W({'status': 'diverged', 'reason': 'loss diverged in epoch 0'})",
         ("failed", "diverged: loss diverged in epoch 0")),
        ("W({'status': 'completed', 'reason': None}); sys.exit(1)",
         ("failed", "exit code 1 after writing a completed result")),
        ("open(sys.argv[1] + '/result.json', 'w').write('{torn')", ("failed", "exit code 0 without result.json")),
    ],
)
def test_outcome_reads_exit_code_and_result(monkeypatch, tmp_path, code, expected):
    fake_trial(monkeypatch, "import json, sys\n"
                            "W = lambda r: open(sys.argv[1] + '/result.json', 'w').write(json.dumps(r))\n" + code)
    status, reason, result = wait_done(start_trial(0, {}, tmp_path, Slot([], 1, 29500), timeout_s=60))
    assert status == expected[0]
    if expected[1] is None:
        assert reason is None and result["utility"] == 0.5
    else:
        assert reason.startswith(expected[1])


def test_stop_terminates_and_then_kills_a_stubborn_trial(monkeypatch, tmp_path):
    fake_trial(monkeypatch, """
        import signal, subprocess, sys, time
        from pathlib import Path
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # A child in the same process group, like the ranks under accelerate launch.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        Path(sys.argv[1], "child.pid").write_text(str(child.pid))
        time.sleep(120)
    """)
    running = start_trial(0, {}, tmp_path, Slot([], 1, 29500), timeout_s=60)
    deadline = time.time() + 30
    while not (tmp_path / "child.pid").is_file() or not (tmp_path / "child.pid").read_text():
        assert time.time() < deadline
        time.sleep(0.05)
    child = psutil.Process(int((tmp_path / "child.pid").read_text()))
    started = time.time()
    running.stop("timeout after 1s", grace_s=1.0)
    assert time.time() - started < 10
    assert running.finished() and running.process.returncode == -signal.SIGKILL
    assert running.outcome()[:2] == ("stopped", "timeout after 1s")
    child.wait(10)  # the whole process group went: the grandchild too
    assert not child.is_running()


def test_a_trial_dies_with_its_orchestrator(tmp_path):
    """A worker killed with SIGKILL takes its trial processes with it."""
    script = tmp_path / "orchestrator.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from aam_search.search import backend
        backend.trial_command = lambda *a, **k: [sys.executable, "-c", "import time; time.sleep(120)"]
        running = backend.start_trial(0, {{}}, Path({str(tmp_path / "trial")!r}), backend.Slot([], 1, 29500), 60)
        print(running.process.pid, flush=True)
        time.sleep(120)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    trial = None
    try:
        trial = psutil.Process(int(parent.stdout.readline()))
        assert trial.is_running() and trial.ppid() == parent.pid
        parent.kill()
        parent.wait(10)
        try:
            trial.wait(10)
        except psutil.TimeoutExpired:
            pytest.fail("the trial outlived its orchestrator")
    finally:
        parent.kill()
        parent.stdout.close()
        if trial is not None and trial.is_running():
            trial.kill()


def test_poll_metrics_returns_each_epoch_once_and_waits_for_a_whole_line(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "pass"])
    sleeper.wait()
    running = backend.RunningTrial(0, tmp_path, sleeper, Slot(gpus=[], threads=1, port=29500), time.time(), 60.0, None)
    assert running.poll_metrics() == []  # no file yet
    path = tmp_path / "metrics.jsonl"
    with path.open("w") as out:
        out.write(json.dumps({"epoch": 0, "loss": 1.0}) + "\n" + '{"epoch": 1, "lo')  # epoch 1 half written
        out.flush()
        assert running.poll_metrics() == [{"epoch": 0, "loss": 1.0}]
        assert running.poll_metrics() == []
        out.write('ss": 0.5}\n' + "not json\n" + json.dumps({"epoch": 2, "loss": 0.25}) + "\n")
    assert running.poll_metrics() == [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]
    assert [line["epoch"] for line in running.metrics] == [0, 1, 2]
