"""Promotion to the Model Registry, and using the promoted adapter (load_adapter, pyfunc, CLI)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from safetensors.torch import load_file, save_file

import aam_search
from aam_search.search.orchestrator import trial_out_dir
from aam_search.search.study import StudyNotFound
from aam_search.tracking.errors import PromotionError
from aam_search.tracking.promote import _check_alias, promote
from aam_search.tracking.store import fluent_uri, model_name
from aam_search.trainer.checkpoint import load_checkpoint

NAME = model_name("tiny")


def versions(tracked) -> list[str]:
    client = tracked.client()
    if not client.search_registered_models(filter_string=f"name = '{NAME}'"):
        return []
    return sorted((str(v.version) for v in client.search_model_versions(f"name = '{NAME}'")), key=int)


def trial_adapter(tracked, number: int):
    return load_checkpoint(trial_out_dir(tracked.config, number) / "adapter.safetensors").adapter


@pytest.fixture(scope="module")
def promoted(tracked):
    """The first promotion of the tracked study: its front's first trial."""
    first = tracked.outcome.front[0].number
    before = versions(tracked)
    promotion = promote("tiny", storage=tracked.storage, trial=first)
    return promotion, before


def test_promotion_registers_a_version_with_the_alias(tracked, promoted):
    promotion, before = promoted
    client = tracked.client()
    assert promotion.model_name == NAME and promotion.alias == "champion"
    assert versions(tracked) == [*before, promotion.version]
    version = client.get_model_version_by_alias(NAME, "champion")
    assert str(version.version) == promotion.version
    run = client.get_run(promotion.run_id)
    assert version.run_id == run.info.run_id
    assert run.info.run_name == f"trial-{promotion.trial}"
    assert run.data.tags["mlflow.parentRunId"] == tracked.parent_run_id
    # test-split metrics, from fresh attackers and probes, on the trial's run
    for key in ("test_utility", "test_leakage", "test_leakage_static", "test_raw_leakage", "test_leakage_reduction"):
        assert key in run.data.metrics and key in promotion.test_metrics
    assert 0 <= run.data.metrics["test_leakage"] <= 1


def test_load_adapter_gives_the_trials_adapter(tracked, promoted):
    promotion, _ = promoted
    adapter = aam_search.load_adapter(promotion.model_uri, tracking_uri=tracked.uri)
    assert isinstance(adapter, torch.nn.Module) and not adapter.training
    reference = trial_adapter(tracked, promotion.trial)
    features = torch.randn(6, 4, 32)
    with torch.no_grad():
        assert torch.equal(adapter(features), reference(features))
    # a local checkpoint works the same way
    local = aam_search.load_adapter(trial_out_dir(tracked.config, promotion.trial) / "adapter.safetensors")
    with torch.no_grad():
        assert torch.equal(local(features), reference(features))


def test_pyfunc_predicts_the_same(tracked, promoted):
    import mlflow

    promotion, _ = promoted
    with fluent_uri(tracked.uri):
        model = mlflow.pyfunc.load_model(promotion.model_uri)
    features = torch.randn(5, 4, 32)
    with torch.no_grad():
        expected = trial_adapter(tracked, promotion.trial)(features).numpy()
    out = model.predict(features.numpy())
    assert out.shape == (5, 4, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_promoting_again_moves_the_alias(tracked, promoted):
    first, _ = promoted
    other = next(n for n in (0, 1, 2) if n != first.trial)
    second = promote("tiny", storage=tracked.storage, trial=other, tracking_uri=tracked.uri)
    client = tracked.client()
    assert int(second.version) == int(first.version) + 1
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == second.version
    assert str(client.get_model_version(NAME, first.version).version) == first.version  # still there
    adapter = aam_search.load_adapter(f"models:/{NAME}@champion", tracking_uri=tracked.uri)
    features = torch.randn(2, 4, 32)
    with torch.no_grad():
        assert torch.equal(adapter(features), trial_adapter(tracked, other)(features))
        old = aam_search.load_adapter(f"models:/{NAME}/{first.version}", tracking_uri=tracked.uri)
        assert torch.equal(old(features), trial_adapter(tracked, first.trial)(features))


def test_anonymize_command(tracked, promoted, tmp_path):
    from aam_search.cli import main

    source, target = tmp_path / "in.safetensors", tmp_path / "out" / "anon.safetensors"
    features = torch.randn(7, 4, 32)
    save_file({"features": features}, str(source))
    code = main(["anonymize", "--model", f"models:/{NAME}@champion", "--in", str(source), "--out", str(target),
                 "--tracking-uri", tracked.uri])
    assert code == 0
    adapter = aam_search.load_adapter(f"models:/{NAME}@champion", tracking_uri=tracked.uri)
    with torch.no_grad():
        expected = adapter(features)
    written = load_file(str(target))
    assert list(written) == ["features"] and torch.allclose(written["features"], expected, atol=1e-6)


def test_anonymize_refuses_a_wrong_file(tracked, promoted, tmp_path, capsys):
    from aam_search.cli import main

    source = tmp_path / "wrong.safetensors"
    save_file({"feats": torch.randn(2, 4, 32)}, str(source))
    assert main(["anonymize", "--model", f"models:/{NAME}@champion", "--in", str(source), "--out",
                 str(tmp_path / "o.safetensors"), "--tracking-uri", tracked.uri]) == 2
    assert "no tensor named 'features'" in capsys.readouterr().err
    save_file({"features": torch.randn(2, 4, 16)}, str(source))
    assert main(["anonymize", "--model", f"models:/{NAME}@champion", "--in", str(source), "--out",
                 str(tmp_path / "o.safetensors"), "--tracking-uri", tracked.uri]) == 2
    assert "[N, L, 32]" in capsys.readouterr().err.replace("\n", "")


def test_failed_promotions_leave_the_registry_alone(tracked, promoted, tmp_path):
    before = versions(tracked)
    alias_before = tracked.client().get_model_version_by_alias(NAME, "champion").version
    with pytest.raises(StudyNotFound):
        promote("no-such-study", storage=tracked.storage)
    with pytest.raises(PromotionError, match="trial 99 does not exist"):
        promote("tiny", storage=tracked.storage, trial=99)
    with pytest.raises(PromotionError, match="no completed trial has utility_drop <= 0.0"):
        promote("tiny", storage=tracked.storage, max_utility_drop=0.0)
    with pytest.raises(PromotionError, match="feature cache"):  # fails late: after MLflow was reached
        promote("tiny", storage=tracked.storage, trial=0, cache=tmp_path / "missing-cache")
    with pytest.raises(PromotionError, match="alias"):
        promote("tiny", storage=tracked.storage, trial=0, alias="latest")
    assert versions(tracked) == before
    assert tracked.client().get_model_version_by_alias(NAME, "champion").version == alias_before


@pytest.mark.parametrize("alias", ["best", "staging-2", "A_b", "v1x", "latest2", "x" * 255,
                                   "latest", "LATEST", "v3", "V12", "", "two words", "a/b", "x" * 256])
def test_the_alias_rule_is_mlflows(tracked, promoted, alias):
    """Our copy of MLflow's alias rule (its validators are private) says what the registry says."""
    client = tracked.client()
    try:
        _check_alias(alias)
        ours = True
    except PromotionError:
        ours = False
    from mlflow.exceptions import MlflowException

    try:
        client.set_registered_model_alias(NAME, alias, promoted[0].version)
        theirs = True
    except MlflowException:
        theirs = False
    if theirs:
        client.delete_registered_model_alias(NAME, alias)
    assert ours == theirs


def test_a_cache_changed_since_extraction_is_never_promoted(tracked, promoted, small_cache, tmp_path):
    import shutil

    copy = tmp_path / small_cache.path.name
    shutil.copytree(small_cache.path, copy)
    with open(copy / "features.safetensors", "r+b") as features:  # flip a byte of the tensor data
        features.seek(-8, 2)
        byte = features.read(1)
        features.seek(-8, 2)
        features.write(bytes([byte[0] ^ 0xFF]))
    before = versions(tracked)
    with pytest.raises(PromotionError, match="features.safetensors: contents changed since extraction"):
        promote("tiny", storage=tracked.storage, trial=0, cache=copy)
    assert versions(tracked) == before


def test_promote_command_errors_name_the_problem(tracked, promoted, capsys):
    from aam_search.cli import main

    before = versions(tracked)
    assert main(["promote", "tiny", "--storage", tracked.storage, "--trial", "42"]) == 2
    assert "trial 42 does not exist" in capsys.readouterr().err
    assert versions(tracked) == before


DIST = {"x": FloatDistribution(0, 1)}  # choosing a trial: tests/search/test_selection.py


def test_a_study_without_completed_trials_cannot_be_promoted(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="empty", storage=storage, directions=["maximize", "minimize"])
    study.add_trial(create_trial(state=TrialState.FAIL, params={"x": 0.5}, distributions=DIST))
    with pytest.raises(PromotionError, match="no completed trial yet"):
        promote("empty", storage=storage)
    with pytest.raises(PromotionError, match="trial 0 is FAIL"):
        promote("empty", storage=storage, trial=0)
