"""What a trial's result.json says about privacy: the worst case over protocols, above-chance
removal, intervals (or why there are none), unseen-task utility, and every field it had before."""

import json

import pytest

from aam_search.protocol import ADAPTER_FILE, RESULT_FILE
from aam_search.search.orchestrator import Orchestrator
from aam_search.trainer.baseline import EVALUATION_VERSION, raw_baseline, summarize, worst_case
from aam_search.trainer.checkpoint import load_checkpoint
from aam_search.trainer.config import EvalConfig, parse_trial_config
from aam_search.trainer.train import run_trial

# Every field result.json had before the evaluation grew intervals and the worst case.
OLD_FIELDS = {
    "status", "reason", "epochs_done", "timings", "utility", "leakage", "leakage_chance", "raw_utility",
    "raw_leakage", "leakage_reduction", "leakage_reduction_above_chance", "utility_drop", "combined_score",
    "adapter_parameters", "runtime", "measured", "baseline",
}


def _leak(cmap: float, chance: float) -> dict:
    return {"cmap": cmap, "chance": chance}


def _result(static: float, clip: float, utility: float = 0.8) -> dict:
    return {"tasks": {"action": {"top1": utility, "chance": 0.25}},
            "privacy": {"static": _leak(static, 0.5), "clip": _leak(clip, 0.6)}}


def test_leakage_is_the_worst_protocol_and_removal_is_above_chance():
    baseline = _result(static=0.9, clip=0.8)
    measured = _result(static=0.6, clip=0.75, utility=0.78)
    summary = summarize(measured, baseline)
    # Worst case: the protocol that leaks most, for the trial and for the raw features alike.
    assert (summary["leakage"], summary["leakage_protocol"]) == (0.75, "clip")
    assert (summary["raw_leakage"], summary["raw_leakage_protocol"]) == (0.9, "static")
    assert summary["leakage_chance"] == 0.5  # the raw worst protocol's chance
    assert summary["leakage_reduction"] == pytest.approx((0.9 - 0.75) / 0.9)
    removed = summary["leakage_above_chance_removed"]
    assert removed["static"] == pytest.approx((0.9 - 0.6) / (0.9 - 0.5))
    assert removed["clip"] == pytest.approx((0.8 - 0.75) / (0.8 - 0.6))
    assert removed["worst"] == removed["clip"] == summary["leakage_reduction_above_chance"]
    assert summary["leakage_reduction_by_protocol"]["static"] == pytest.approx(0.3 / 0.9)
    assert summary["combined_score"] == pytest.approx((0.78 + 1 - 0.75) / 2)
    # primary_protocol, kept for old callers, no longer picks the headline protocol.
    assert summarize(measured, baseline, "static")["leakage"] == 0.75


def test_the_studys_reference_values_use_the_same_worst_case():
    baseline = _result(static=0.7, clip=0.85)
    values, chance = Orchestrator._baseline_values(None, baseline)
    summary = summarize(_result(static=0.7, clip=0.85), baseline)
    assert values["leakage"] == summary["raw_leakage"] == 0.85 == worst_case(baseline["privacy"])[1]
    assert chance["leakage"] == summary["leakage_chance"] == 0.6
    assert (values["leakage:static"], values["leakage:clip"]) == (0.7, 0.85)


def test_eval_config_checks_its_new_fields():
    assert EvalConfig().attackers == ("linear", "mlp", "mlp_deep", "knn")
    with pytest.raises(ValueError, match="crossfit_folds"):
        EvalConfig(crossfit_folds=1)
    with pytest.raises(ValueError, match="task:<name>"):
        EvalConfig(unseen_tasks=("speed",))
    with pytest.raises(ValueError):
        EvalConfig(attackers=("forest",))
    assert EvalConfig(unseen_tasks=("task:speed",), crossfit_folds=0).unseen_tasks == ("task:speed",)


def test_baselines_of_older_evaluation_code_are_not_reused(small_cache):
    config = EvalConfig(protocols=("static",), attackers=("linear",), attacker_epochs=1, probe_epochs=1,
                        crossfit_folds=0, bootstrap_resamples=0)
    fresh = raw_baseline(small_cache, config, seed=0)
    assert fresh["settings"]["evaluation_version"] == EVALUATION_VERSION >= 3
    assert set(fresh["privacy"]["static"]["attackers"]) == {"linear"}


def _trial(cache, **eval_changes) -> dict:
    heads = 4 if cache.dim % 4 == 0 else 1
    return {
        "cache": str(cache.path), "seed": 0,
        "adapter": {"kind": "attention", "layers": 1, "heads": heads, "ffn_mult": 2.0},
        "optim": {"epochs": 1, "batch_size": 4, "head_pretrain_epochs": 1},
        "eval": {"protocols": ["static", "clip"], "attacker_epochs": 1, "probe_epochs": 2,
                 "attackers": ["linear", "knn"], "bootstrap_resamples": 50, **eval_changes},
    }


def test_trial_result_keeps_old_fields_and_adds_intervals_and_unseen_tasks(small_cache, tmp_path, capsys):
    assert "speed" in small_cache.meta["task_names"]  # the synthetic generator's motion-only task
    config = parse_trial_config(_trial(small_cache, unseen_tasks=["task:speed"]))
    result = run_trial(config, tmp_path)
    assert result["status"] == "completed", result["reason"]
    stored = json.loads((tmp_path / RESULT_FILE).read_text())
    assert OLD_FIELDS <= set(stored)
    for where in ("measured", "baseline"):
        for protocol in ("static", "clip"):
            assert {"cmap", "chance"} <= set(stored[where]["privacy"][protocol]), (where, protocol)
            assert {"cmap_train", "cmap_crossfit", "attackers", "strongest"} <= set(stored[where]["privacy"][protocol])
    assert stored["leakage"] == max(stored["measured"]["privacy"][p]["cmap"] for p in ("static", "clip"))
    assert stored["raw_leakage"] == max(stored["baseline"]["privacy"][p]["cmap"] for p in ("static", "clip"))
    assert set(stored["leakage_above_chance_removed"]) == {"static", "clip", "worst"}
    # The small cache has a handful of validation videos: no interval, a note, a log line.
    assert stored["ci"]["utility"] is None and stored["ci"]["leakage"] is None
    assert stored["baseline"]["ci"]["leakage"] is None  # the raw features' intervals, alike
    assert "< 10" in stored["ci_note"]
    assert "warning: bootstrap intervals left out" in capsys.readouterr().err
    # The unseen task is probed and reported, but its head was never trained.
    assert stored["measured"]["tasks"]["task:speed"]["unseen"] is True
    assert stored["unseen_utility"]["task:speed"] == stored["measured"]["tasks"]["task:speed"]["top1"]
    heads = load_checkpoint(tmp_path / ADAPTER_FILE).heads
    assert heads is not None and "task:speed" not in heads.num_classes and "action" in heads.num_classes


def test_an_unseen_task_the_cache_lacks_fails_the_trial_with_its_name(small_cache, tmp_path):
    config = parse_trial_config(_trial(small_cache, unseen_tasks=["task:colour"]))
    with pytest.raises(ValueError, match="task:colour"):
        run_trial(config, tmp_path)
    stored = json.loads((tmp_path / RESULT_FILE).read_text())
    assert stored["status"] == "failed" and "task:colour" in stored["reason"] and "task:speed" in stored["reason"]
