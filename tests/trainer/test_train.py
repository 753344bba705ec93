"""The trial recipe end to end: the files it writes, its objective's phases, and how it stops.

Trials run in-process (``run_trial``) on the session's small feature cache; the ones where the
process itself matters (signals, DeepSpeed's process-global state) run ``aam-search train`` as
a child process.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import aam_search.trainer.objective as objective_module
from aam_search.cli import main as cli_main
from aam_search.features.cache import CacheError
from aam_search.protocol import ADAPTER_FILE, METRICS_FILE, RESULT_FILE, TRIAL_FILE, read_metrics
from aam_search.trainer.checkpoint import load_checkpoint
from aam_search.trainer.config import parse_trial_config
from aam_search.trainer.data import TrainingData, task_num_classes
from aam_search.trainer.losses import LossWeights
from aam_search.trainer.model import AdapterConfig, PrivacyProjector, TaskHeads, build_adapter, count_parameters
from aam_search.trainer.objective import AAMObjective
from aam_search.trainer.schedule import lr_at
from aam_search.trainer.train import AAMRecipe, run_trial

EPOCH_KEYS = {"epoch", "loss", "l_lc", "l_task", "l_privacy", "lr", "seconds", "samples_per_s"}
RESULT_KEYS = {
    "status", "reason", "epochs_done", "timings", "utility", "leakage", "leakage_chance", "raw_utility",
    "raw_leakage", "leakage_reduction", "utility_drop", "combined_score", "adapter_parameters", "runtime",
}
BATCH = 4


def _merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _config_data(cache, **changes) -> dict:
    heads = 4 if cache.dim % 4 == 0 else 1
    base = {
        "cache": str(cache.path),
        "seed": 0,
        "adapter": {"kind": "attention", "layers": 1, "heads": heads, "ffn_mult": 2.0},
        # min_steps 0: these trials run exactly their epochs (the budget has its own tests).
        "optim": {"epochs": 2, "min_steps": 0, "batch_size": BATCH, "head_pretrain_epochs": 2},
        # One protocol and the same settings everywhere: the raw baseline is computed once.
        "eval": {"protocols": ["static"], "primary_protocol": "static", "attacker_epochs": 5, "probe_epochs": 5},
    }
    return _merge(base, changes)


def _config(cache, **changes):
    return parse_trial_config(_config_data(cache, **changes))


def _strict_json(path: Path) -> dict:
    """result.json must be strict JSON: NaN/Infinity tokens are refused."""

    def refuse(token):
        raise ValueError(f"{path} holds the non-JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _steps_per_epoch(cache) -> int:
    return TrainingData(cache).batches_per_epoch(BATCH)


# ---------------------------------------------------------------- a completed trial


@pytest.fixture(scope="module")
def adversarial_trial(small_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("adversarial-trial")
    config = _config(small_cache, loss={"privacy_objective": "adversarial", "projector_dim": 16},
                     optim={"lr": 1e-3})
    result = run_trial(config, out)
    return config, out, result


def test_completed_trial_writes_its_files(adversarial_trial, small_cache):
    config, out, result = adversarial_trial
    assert result["status"] == "completed", result["reason"]
    names = {p.name for p in out.iterdir()}
    assert {TRIAL_FILE, METRICS_FILE, RESULT_FILE, ADAPTER_FILE} <= names
    assert not [n for n in names if n.endswith(".tmp")]

    trial = json.loads((out / TRIAL_FILE).read_text())
    assert trial == json.loads(json.dumps(config.resolved(_steps_per_epoch(small_cache))))
    assert trial["optim"]["budget"]["epochs"] == config.optim.epochs  # min_steps 0: as configured
    assert trial["optim"]["effective_lr"] == pytest.approx(1e-3)
    assert trial["loss"]["privacy_objective"] == "adversarial"
    assert Path(trial["cache"]) == small_cache.path


def test_metrics_has_one_line_per_epoch(adversarial_trial, small_cache):
    config, out, _ = adversarial_trial
    lines = read_metrics(out / METRICS_FILE)
    assert len(lines) == config.optim.epochs == len((out / METRICS_FILE).read_text().splitlines())
    assert [line["epoch"] for line in lines] == list(range(config.optim.epochs))
    steps = _steps_per_epoch(small_cache)
    for line in lines:
        assert EPOCH_KEYS | {"l_projector", "l_task/action"} <= set(line)
        for key, value in line.items():
            assert isinstance(value, (int, float)) and math.isfinite(value), (key, value)
        assert line["seconds"] > 0
        assert line["samples_per_s"] * line["seconds"] == pytest.approx(steps * BATCH)
        assert 0 < line["lr"] <= 1e-3 + 1e-12
        assert line["l_privacy"] > 0 and line["l_projector"] > 0 and line["l_task"] > 0
        # L = w_lc * L_LC + w_T * L_T - w_B * L_B, averaged over the epoch's steps.
        expected = 100 * line["l_lc"] + line["l_task"] - line["l_privacy"]
        assert line["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    # The adapter starts as the identity and then moves away from it.
    assert lines[-1]["l_lc"] > 0


def test_result_json_holds_the_headline_numbers(adversarial_trial, small_cache):
    config, out, returned = adversarial_trial
    result = _strict_json(out / RESULT_FILE)
    assert RESULT_KEYS <= set(result)
    assert result["status"] == "completed" and result["reason"] is None
    assert result["retryable"] is True  # whatever fails after it (a crash at exit) may pass next time
    assert result["epochs_done"] == config.optim.epochs
    for key in ("utility", "leakage", "leakage_chance", "raw_utility", "raw_leakage", "combined_score"):
        assert isinstance(result[key], float) and 0.0 <= result[key] <= 1.0, key
    assert result["combined_score"] == pytest.approx((result["utility"] + 1 - result["leakage"]) / 2)
    assert result["leakage_reduction"] == pytest.approx(
        (result["raw_leakage"] - result["leakage"]) / result["raw_leakage"])
    if result["raw_utility"]:
        assert result["utility_drop"] == pytest.approx(
            (result["raw_utility"] - result["utility"]) / result["raw_utility"])
    else:  # undefined against a zero baseline, written as a string (JSON has no NaN)
        assert result["utility_drop"] in ("nan", "NaN")
    # Headlines come from the measured numbers and the raw baseline of the primary protocol.
    measured, baseline = result["measured"], result["baseline"]
    assert result["utility"] == measured["tasks"]["action"]["top1"]
    assert result["raw_utility"] == baseline["tasks"]["action"]["top1"]
    assert result["leakage"] == measured["privacy"]["static"]["cmap"]
    assert result["raw_leakage"] == baseline["privacy"]["static"]["cmap"]
    assert result["leakage_chance"] == baseline["privacy"]["static"]["chance"]
    assert result["leakage_chance"] < 1
    assert set(measured["privacy"]) == {"static"}  # only the configured protocol ran
    assert "action" in measured["cotrained_top1"]
    timings = result["timings"]
    for key in ("setup_s", "head_pretrain_s", "train_s", "eval_s", "total_s"):
        assert timings[key] >= 0, key
    assert timings["total_s"] >= timings["train_s"] + timings["eval_s"]
    adapter = build_adapter(small_cache.dim, config.adapter)
    assert result["adapter_parameters"] == count_parameters(adapter) > 0
    assert result["runtime"]["distributed_type"] == "NO"
    assert result["runtime"]["processes"] == 1
    assert "zero_stage" not in result["runtime"]
    assert result["runtime"]["data_residency"] == "device"  # the tiny cache fits in memory
    assert result["runtime"]["optimizer"] == "foreach" and result["runtime"]["compiled"] is False
    assert timings["data_to_device_s"] >= 0
    # run_trial returns what it wrote.
    assert returned["status"] == "completed"
    assert returned["combined_score"] == result["combined_score"]


def test_saved_adapter_is_the_trained_one(adversarial_trial, small_cache):
    config, out, _ = adversarial_trial
    loaded = load_checkpoint(out / ADAPTER_FILE)
    assert loaded.info["cache_key"] == small_cache.meta["key"]
    assert loaded.info["action_classes"] == small_cache.meta["action_classes"]
    assert loaded.adapter.config == config.adapter
    assert loaded.heads is not None and loaded.heads.num_classes == task_num_classes(small_cache)
    tokens = small_cache.clip_features[:4].float()
    with torch.no_grad():
        adapted = loaded.adapter(tokens)
    assert adapted.shape == tokens.shape
    assert not torch.allclose(adapted, tokens)  # trained at lr 1e-3: no longer the identity


def test_save_adapter_false_writes_no_checkpoint(small_cache, tmp_path, monkeypatch):
    # Evaluation is not under test here; keep it out of the way.
    import aam_search.trainer.train as train_module

    monkeypatch.setattr(train_module.AAMRecipe, "evaluate", lambda self: {"stub": True})
    result = run_trial(_config(small_cache, save_adapter=False, optim={"epochs": 1}), tmp_path)
    assert result["status"] == "completed"
    assert not (tmp_path / ADAPTER_FILE).exists()
    assert _strict_json(tmp_path / RESULT_FILE)["stub"] is True


def test_identity_sanity_matches_the_raw_baseline(small_cache, tmp_path):
    """Only L_LC at a tiny lr: the adapter stays the identity, so the fresh attackers and probes
    (same seed) see the raw features and must reproduce the raw baseline."""
    config = _config(small_cache, loss={"w_privacy": 0, "w_task": 0}, optim={"epochs": 1, "lr": 1e-6})
    result = run_trial(config, tmp_path)
    assert result["status"] == "completed", result["reason"]
    (line,) = read_metrics(tmp_path / METRICS_FILE)
    assert line["l_lc"] < 1e-10
    assert line["lr"] == pytest.approx(1e-6)
    assert result["utility"] == pytest.approx(result["raw_utility"], abs=0.05)
    assert result["leakage"] == pytest.approx(result["raw_leakage"], abs=0.02)
    assert result["leakage_reduction"] == pytest.approx(0.0, abs=0.03)
    tokens = small_cache.static_features[:6].float()
    with torch.no_grad():
        assert torch.allclose(load_checkpoint(tmp_path / ADAPTER_FILE).adapter(tokens), tokens, atol=1e-5)


# ---------------------------------------------------------------- the objective's phases


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _unchanged(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(p, before[name]) for name, p in module.named_parameters())


def test_alternating_steps_move_only_their_own_parameters(small_cache, tmp_path):
    recipe = AAMRecipe(
        _config(small_cache, loss={"privacy_objective": "adversarial", "projector_dim": 16},
                optim={"head_pretrain_epochs": 0}),
        tmp_path,
    )
    recipe.setup()
    objective = recipe.accelerator.unwrap_model(recipe.model)
    assert objective.projector is not None
    batch = next(iter(recipe.data.batches(BATCH, seed=0, epoch=0)))
    assert int(batch.pair_mask.sum()) >= 2  # the privacy term is live in this batch

    # An adapter step first, so AdamW has momentum for the adapter that a careless
    # projector step (zero grads instead of none, or a shared lr) would still apply.
    adapter0, heads0 = _snapshot(objective.adapter), _snapshot(objective.heads)
    projector0 = _snapshot(objective.projector)
    losses = recipe._step(batch, "adapter", 1e-2)
    assert {"loss", "l_lc", "l_task", "l_privacy"} <= set(losses)
    assert not _unchanged(objective.adapter, adapter0)
    assert not _unchanged(objective.heads, heads0)
    assert _unchanged(objective.projector, projector0)

    adapter1, heads1 = _snapshot(objective.adapter), _snapshot(objective.heads)
    projector1 = _snapshot(objective.projector)
    losses = recipe._step(batch, "projector", 1e-2)
    assert set(losses) == {"l_projector"} and math.isfinite(losses["l_projector"])
    assert _unchanged(objective.adapter, adapter1)
    assert _unchanged(objective.heads, heads1)
    assert not _unchanged(objective.projector, projector1)

    adapter2, projector2 = _snapshot(objective.adapter), _snapshot(objective.projector)
    recipe._step(batch, "adapter", 1e-2)
    assert not _unchanged(objective.adapter, adapter2)
    assert _unchanged(objective.projector, projector2)
    # Group learning rates are restored for the next adapter step.
    rates = {group["name"]: group["lr"] for group in recipe.optimizer.param_groups}
    assert rates == {"adapter": 1e-2, "projector": 0.0}


def _objective(dim: int = 16, projector: bool = True):
    torch.manual_seed(0)
    adapter = build_adapter(dim, AdapterConfig(layers=1, heads=4))
    with torch.no_grad():  # away from the identity, so every branch has gradients
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    heads = TaskHeads(dim, {"action": 3})
    proj = PrivacyProjector(dim, 8) if projector else None
    return AAMObjective(adapter, heads, proj, LossWeights(), temperature=0.1)


def _inputs(dim: int = 16, batch: int = 6):
    g = torch.Generator().manual_seed(1)
    clips, a, b = (torch.randn(batch, 3, dim, generator=g) for _ in range(3))
    mask = torch.tensor([True] * (batch - 1) + [False])
    targets = {"action": torch.tensor([0, 1, 2, -1, 0, 1])[:batch]}
    return clips, a, b, mask, targets


def test_adapter_phase_gives_the_projector_no_gradient():
    objective = _objective()
    out = objective(*_inputs(), phase="adapter")
    out["loss"].backward()
    assert all(p.grad is None for p in objective.projector.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.adapter.parameters())
    assert all(p.grad is not None for p in objective.heads.parameters())
    # The privacy term is maximised: it enters the total with a minus sign.
    expected = 100 * out["l_lc"] + out["l_task"] - out["l_privacy"]
    assert torch.allclose(out["loss"], expected)


def test_projector_phase_gives_the_adapter_no_gradient():
    objective = _objective()
    out = objective(*_inputs(), phase="projector")
    out["loss"].backward()
    assert all(p.grad is None for p in objective.adapter.parameters())
    assert all(p.grad is None for p in objective.heads.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.projector.parameters())


def test_projector_phase_needs_a_projector():
    with pytest.raises(RuntimeError, match="adversarial"):
        _objective(projector=False)(*_inputs(), phase="projector")


def test_adversarial_privacy_term_goes_through_the_projector():
    with_projector = _objective(projector=True)
    plain = _objective(projector=False)
    a = with_projector(*_inputs())["l_privacy"]
    b = plain(*_inputs())["l_privacy"]
    assert not torch.allclose(a, b)


def test_lr_schedule_warms_up_then_decays_to_zero():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(4, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(0, 10, 0, 2.0) == pytest.approx(2.0)
    rates = [lr_at(s, 50, 5, 1.0) for s in range(50)]
    assert rates[4:] == sorted(rates[4:], reverse=True)


# ---------------------------------------------------------------- trials that stop early


def test_diverging_trial_is_marked_diverged(small_cache, tmp_path):
    # The adapter starts as the identity (L_LC = 0); after one big step L_LC passes the tiny guard.
    config = _config(small_cache, loss={"w_lc": 1e6}, guard={"max_lc": 1e-12},
                     optim={"epochs": 3, "lr": 1e-2, "head_pretrain_epochs": 0})
    result = run_trial(config, tmp_path)
    assert result["status"] == "diverged"
    written = _strict_json(tmp_path / RESULT_FILE)
    assert written["status"] == "diverged"
    assert written["retryable"] is False  # the same parameters diverge again
    lines = read_metrics(tmp_path / METRICS_FILE)
    assert len(lines) == written["epochs_done"] < config.optim.epochs
    assert "diverged" in written["reason"]
    assert f"epoch {written['epochs_done']}" in written["reason"]
    assert "utility" not in written


def test_rerun_in_the_same_folder_leaves_no_stale_record(small_cache, tmp_path, monkeypatch):
    """A second run into the folder of a finished one must not append to its metrics or leave
    its adapter and result behind to pass for the new run's."""
    import aam_search.trainer.train as train_module

    with monkeypatch.context() as patch:
        patch.setattr(train_module.AAMRecipe, "evaluate", lambda self: {"stub": True})
        first = run_trial(_config(small_cache, optim={"epochs": 2, "head_pretrain_epochs": 0}), tmp_path)
    assert first["status"] == "completed" and (tmp_path / ADAPTER_FILE).is_file()
    assert len(read_metrics(tmp_path / METRICS_FILE)) == 2

    real = objective_module.latent_consistency

    def nan_at_once(adapted, raw):
        return real(adapted, raw) * float("nan")

    monkeypatch.setattr(objective_module, "latent_consistency", nan_at_once)
    second = run_trial(_config(small_cache, optim={"epochs": 2, "head_pretrain_epochs": 0}), tmp_path)
    assert second["status"] == "failed"
    assert read_metrics(tmp_path / METRICS_FILE) == []
    assert not (tmp_path / ADAPTER_FILE).exists()
    assert "stub" not in _strict_json(tmp_path / RESULT_FILE)


def test_non_finite_loss_fails_the_trial_naming_the_epoch(small_cache, tmp_path, monkeypatch):
    steps = _steps_per_epoch(small_cache)
    real = objective_module.latent_consistency
    calls = []

    def nan_from_epoch_1(adapted, raw):
        calls.append(1)
        value = real(adapted, raw)
        return value * float("nan") if len(calls) > steps else value

    monkeypatch.setattr(objective_module, "latent_consistency", nan_from_epoch_1)
    config = _config(small_cache, optim={"epochs": 3, "head_pretrain_epochs": 0})
    result = run_trial(config, tmp_path)
    assert result["status"] == "failed"
    written = _strict_json(tmp_path / RESULT_FILE)  # the NaN must not leak into the JSON as a bare token
    assert written["status"] == "failed"
    assert "non-finite" in written["reason"]
    assert written["retryable"] is False
    assert "epoch 1" in written["reason"]
    assert written["epochs_done"] == 1
    (line,) = read_metrics(tmp_path / METRICS_FILE)  # epoch 0 finished, epoch 1 did not
    assert line["epoch"] == 0 and math.isfinite(line["loss"])
    assert not (tmp_path / ADAPTER_FILE).exists()


def test_an_error_in_setup_is_reported_then_raised(small_cache, tmp_path):
    missing = tmp_path / "no-cache-here"
    config = parse_trial_config({**_config_data(small_cache), "cache": str(missing)})
    with pytest.raises(CacheError):
        run_trial(config, tmp_path / "out")
    written = _strict_json(tmp_path / "out" / RESULT_FILE)
    assert written["status"] == "failed" and written["retryable"] is True
    assert "CacheError" in written["reason"] and str(missing) in written["reason"]


def test_the_recipe_ends_its_accelerator_once_whether_it_completes_or_fails(small_cache, tmp_path, monkeypatch):
    from accelerate import Accelerator

    import aam_search.trainer.train as train_module

    ended = []
    monkeypatch.setattr(Accelerator, "end_training", lambda self: ended.append(self))
    monkeypatch.setattr(train_module.AAMRecipe, "evaluate", lambda self: {"stub": True})
    recipe = AAMRecipe(_config(small_cache, optim={"epochs": 1, "head_pretrain_epochs": 0}), tmp_path / "ok")
    assert recipe.run()["status"] == "completed"
    assert ended == [recipe.accelerator]
    recipe.cleanup()
    assert len(ended) == 1  # once

    broken = AAMRecipe(parse_trial_config({**_config_data(small_cache), "cache": str(tmp_path / "gone")}),
                       tmp_path / "failed")
    with pytest.raises(CacheError):  # the trial's error, not one from the teardown
        broken.run()
    assert ended[1:] == [broken.accelerator]
    assert _strict_json(tmp_path / "failed" / RESULT_FILE)["status"] == "failed"


def test_reporter_writes_strict_json_and_only_on_the_main_process(tmp_path):
    from aam_search.trainer.reporter import TrialReporter

    quiet = TrialReporter(tmp_path / "rank1", enabled=False)
    quiet.trial({"a": 1})
    quiet.epoch({"epoch": 0})
    quiet.result("completed", None)
    assert not (tmp_path / "rank1").exists()

    reporter = TrialReporter(tmp_path / "rank0")
    reporter.epoch({"epoch": 0, "loss": float("inf"), "nested": {"x": [float("nan"), 1.0]}})
    reporter.result("failed", "why", score=float("nan"))
    (line,) = read_metrics(tmp_path / "rank0" / METRICS_FILE)
    assert line["loss"] == "inf" and line["nested"]["x"][0] == "nan"
    assert _strict_json(tmp_path / "rank0" / RESULT_FILE)["score"] == "nan"
    with pytest.raises(ValueError, match="status"):
        reporter.result("exploded", None)
    assert read_metrics(tmp_path / "absent.jsonl") == []


# ---------------------------------------------------------------- the command line


def _write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_bad_config_path_exits_2_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "missing-trial.yaml"
    code = cli_main(["train", "--config", str(missing), "--out", str(tmp_path / "out")])
    assert code == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "out" / RESULT_FILE).exists()


def test_cli_bad_field_exits_2_naming_file_and_field(small_cache, tmp_path, capsys):
    path = _write_yaml(tmp_path / "trial.yaml", _config_data(small_cache, optim={"batch_size": 1}))
    code = cli_main(["train", "--config", str(path), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert str(path) in err and "optim.batch_size" in err


def test_cli_missing_cache_exits_2_and_records_the_failure(tmp_path, small_cache, capsys):
    data = {**_config_data(small_cache), "cache": "nowhere"}  # relative: resolved against the YAML
    path = _write_yaml(tmp_path / "trial.yaml", data)
    code = cli_main(["train", "--config", str(path), "--out", str(tmp_path / "out")])
    assert code == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
    assert _strict_json(tmp_path / "out" / RESULT_FILE)["status"] == "failed"


def _child_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ACCELERATE_", "DEEPSPEED_")) and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE",
                                                                        "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                                                                        "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _launch(config_path: Path, out: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "aam_search.cli", "train", "--config", str(config_path), "--out", str(out)],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=_child_env(),
    )


def _wait_for_lines(proc: subprocess.Popen, metrics: Path, count: int, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(read_metrics(metrics)) < count:
        if proc.poll() is not None:
            pytest.fail(f"trial exited early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {count} metrics lines after {timeout}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def signalled_trials(small_cache, tmp_path_factory):
    """Two long trials run side by side; one gets SIGTERM, the other SIGKILL, mid-training."""
    root = tmp_path_factory.mktemp("signalled")
    long = _config_data(small_cache, optim={"epochs": 1_000_000, "head_pretrain_epochs": 0}, save_adapter=False)
    config_path = _write_yaml(root / "trial.yaml", long)
    runs = {}
    for name in ("term", "kill"):
        out, log = root / name, root / f"{name}.log"
        runs[name] = (_launch(config_path, out, log), out, log)
    try:
        for name, sig in (("term", signal.SIGTERM), ("kill", signal.SIGKILL)):
            proc, out, log = runs[name]
            _wait_for_lines(proc, out / METRICS_FILE, 3, log)
            proc.send_signal(sig)
        for proc, _, _ in runs.values():
            proc.wait(timeout=60)
    finally:
        for proc, _, _ in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {name: (proc.returncode, out, log.read_text()) for name, (proc, out, log) in runs.items()}


def test_sigterm_stops_the_trial_and_records_why(signalled_trials):
    code, out, log = signalled_trials["term"]
    assert code == 1, log[-3000:]  # handled: not killed by the signal (-15)
    result = _strict_json(out / RESULT_FILE)
    assert result["status"] == "terminated" and result["retryable"] is True
    assert "SIGTERM" in result["reason"] and "epoch" in result["reason"]
    lines = read_metrics(out / METRICS_FILE)
    assert len(lines) >= 3
    assert len(lines) == result["epochs_done"]
    assert [line["epoch"] for line in lines] == list(range(len(lines)))
    assert "terminated" in log


def test_sigkill_leaves_parseable_metrics_and_no_result(signalled_trials):
    code, out, _ = signalled_trials["kill"]
    assert code == -signal.SIGKILL
    assert not (out / RESULT_FILE).exists()
    assert (out / TRIAL_FILE).is_file()
    metrics = out / METRICS_FILE
    lines = read_metrics(metrics)
    assert len(lines) >= 3
    assert [line["epoch"] for line in lines] == list(range(len(lines)))
    for line in lines:
        assert EPOCH_KEYS <= set(line)
    # A line torn by a kill mid-write is skipped, not fatal.
    with metrics.open("a") as handle:
        handle.write('{"epoch": 99, "loss": 1.2')
    assert read_metrics(metrics) == lines


# ---------------------------------------------------------------- DeepSpeed


def test_deepspeed_zero2_trial_on_cpu(small_cache, tmp_path):
    pytest.importorskip("deepspeed")
    pytest.importorskip("transformers")
    (tmp_path / "ds.json").write_text(json.dumps({
        "zero_optimization": {"stage": 2},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": 1,
    }))
    # A relative path: resolved against the trial YAML's folder, not the child's working directory.
    path = _write_yaml(tmp_path / "trial.yaml", _config_data(small_cache, deepspeed="ds.json", optim={"epochs": 1}))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "aam_search.cli", "train", "--config", str(path), "--out", str(out)],
        capture_output=True, text=True, env=_child_env(), timeout=240, cwd=small_cache.path.parent,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = _strict_json(out / RESULT_FILE)
    assert result["status"] == "completed"
    assert result["runtime"]["distributed_type"] == "DEEPSPEED"
    assert result["runtime"]["zero_stage"] == 2
    assert result["runtime"]["processes"] == 1
    assert len(read_metrics(out / METRICS_FILE)) == 1
    assert load_checkpoint(out / ADAPTER_FILE).adapter.dim == small_cache.dim


# ---------------------------------------------------------------- the step budget and the privacy objectives


def test_min_steps_raises_the_epochs_and_trial_json_records_the_budget(small_cache, tmp_path, monkeypatch):
    import aam_search.trainer.train as train_module

    monkeypatch.setattr(train_module.AAMRecipe, "evaluate", lambda self: {"stub": True})
    steps = _steps_per_epoch(small_cache)
    config = _config(small_cache, optim={"epochs": 1, "min_steps": 3 * steps + 1, "head_pretrain_epochs": 0})
    result = run_trial(config, tmp_path)
    assert result["status"] == "completed", result["reason"]
    lines = read_metrics(tmp_path / METRICS_FILE)
    assert len(lines) == result["epochs_done"] == 4  # ceil((3 * steps + 1) / steps)
    budget = json.loads((tmp_path / TRIAL_FILE).read_text())["optim"]["budget"]
    assert budget == {"steps_per_epoch": steps, "epochs": 4, "total_steps": 4 * steps,
                      "warmup_steps": int(0.05 * 4 * steps)}
    # Warm-up then cosine over the whole raised budget: the last epoch ends near zero.
    assert lines[-1]["lr"] < lines[0]["lr"] or steps * 4 <= 2


def test_hsic_term_is_logged_and_enters_the_total(small_cache, tmp_path, monkeypatch):
    import aam_search.trainer.train as train_module

    monkeypatch.setattr(train_module.AAMRecipe, "evaluate", lambda self: {"stub": True})
    config = _config(small_cache, loss={"w_hsic": 5.0, "hsic_condition": "action"},
                     optim={"lr": 1e-3, "head_pretrain_epochs": 0})
    assert run_trial(config, tmp_path)["status"] == "completed"
    for line in read_metrics(tmp_path / METRICS_FILE):
        assert {"l_hsic", "l_hsic/clip", "l_hsic/static"} <= set(line)
        assert 0 <= line["l_hsic/clip"] <= 1 and 0 <= line["l_hsic/static"] <= 1
        assert line["l_hsic"] == pytest.approx((line["l_hsic/clip"] + line["l_hsic/static"]) / 2, rel=1e-5)
        expected = 100 * line["l_lc"] + line["l_task"] - line["l_privacy"] + 5.0 * line["l_hsic"]
        assert line["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_hsic_off_adds_no_term(small_cache):
    objective = _objective(projector=False)
    out = objective(*_inputs(), attrs=torch.ones(6, 2))
    assert "l_hsic" not in out


def test_hsic_gradient_reaches_the_adapter():
    torch.manual_seed(0)
    objective = _objective(projector=False)
    objective.weights = LossWeights(lc=0.0, task=0.0, privacy=0.0, hsic=1.0)
    attrs = torch.tensor([[0, 1], [1, 0], [1, 1], [0, 0], [1, -1], [-1, -1]])
    out = objective(*_inputs(), attrs=attrs)
    out["loss"].backward()
    assert out["loss"] > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.adapter.parameters())


@pytest.fixture(scope="module")
def eraser_trial(small_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("eraser-trial")
    config = _config(small_cache, loss={"eraser": True, "w_hsic": 1.0}, optim={"lr": 1e-3})
    return config, out, run_trial(config, out)


def test_eraser_trial_stores_the_eraser_and_measures_what_users_get(eraser_trial, small_cache):
    from aam_search.trainer.baseline import evaluate_features

    config, out, result = eraser_trial
    assert result["status"] == "completed", result["reason"]
    assert result["eraser"]["method"] == "leace" and result["eraser"]["attrs"] == small_cache.meta["attr_names"]
    loaded = load_checkpoint(out / ADAPTER_FILE)
    assert loaded.eraser is not None and loaded.info["eraser"]["rank"] == loaded.eraser.rank >= 1
    assert loaded.aam is not None and loaded.aam.config == config.adapter
    tokens = small_cache.clip_features[:5].float()
    with torch.no_grad():
        assert torch.allclose(loaded.adapter(tokens), loaded.eraser(loaded.aam(tokens)))
        assert not torch.allclose(loaded.adapter(tokens), loaded.aam(tokens), atol=1e-4)
    # The trial's numbers are those of the stored adapter-plus-eraser.
    again = evaluate_features(small_cache, lambda t: loaded.adapter(t), config.eval, seed=config.seed)
    assert again["privacy"]["static"]["cmap"] == pytest.approx(result["measured"]["privacy"]["static"]["cmap"],
                                                               abs=1e-6)
    assert again["tasks"]["action"]["top1"] == pytest.approx(result["utility"], abs=1e-6)


def test_eraser_leaves_no_linear_trace_of_the_attributes_on_train(eraser_trial, small_cache):
    """LEACE's guarantee, on the train rows it was fitted on: zero covariance with every label."""
    import numpy as np

    _, out, _ = eraser_trial
    loaded = load_checkpoint(out / ADAPTER_FILE)
    videos = small_cache.video_indices("train", with_attrs=True)
    rows = torch.from_numpy(np.isin(small_cache.static_video.numpy(), videos)).nonzero().squeeze(1)
    with torch.no_grad():
        pooled = loaded.adapter(small_cache.static_features[rows].float()).mean(1).double()
        raw = loaded.aam(small_cache.static_features[rows].float()).mean(1).double()
    labels = small_cache.labels("attrs")[small_cache.static_video[rows]].double()
    for j in range(labels.shape[1]):
        known = labels[:, j] >= 0
        z = labels[known, j] - labels[known, j].mean()
        before = ((raw[known] - raw[known].mean(0)).T @ z).abs().max()
        after = ((pooled[known] - pooled[known].mean(0)).T @ z).abs().max()
        assert after < 1e-4 * max(1.0, float(before))
