import pytest

from aam_search.features.config import ConfigError
from aam_search.search.config import parse_study_config

BASE = {"name": "s", "data": {"manifest": "no/such/manifest.csv"}}


def _parse(**changes):
    return parse_study_config({**BASE, **changes}, "study.yaml")


def test_off_by_default_and_accepted():
    assert _parse().early_stopping is None
    stopping = _parse(early_stopping={"kind": "mo-asha", "min_epochs": 2, "reduction_factor": 3}).early_stopping
    assert (stopping.min_epochs, stopping.reduction_factor) == (2, 3)


def test_early_stopping_with_stacked_trials_is_accepted():
    """A stack's members are evaluated at rungs too; a pruned member leaves the stack."""
    config = _parse(early_stopping={"min_epochs": 2}, stack=4)
    assert config.stack == 4 and config.early_stopping.min_epochs == 2


@pytest.mark.parametrize("changes, words", [
    ({"early_stopping": {"reduction_factor": 1}}, "early_stopping.reduction_factor"),
    ({"early_stopping": {"kind": "asha"}}, "early_stopping.kind"),
    ({"early_stopping": {"min_epochs": 20}}, "early_stopping.min_epochs"),
    ({"early_stopping": {"min_epochs": 5}, "trial": {"optim": {"epochs": 5}}}, "trial.optim.epochs = 5"),
    ({"early_stopping": {}, "sampler": "grid", "space": "paper"}, "grid sampler"),
])
def test_bad_early_stopping_names_the_field(changes, words):
    with pytest.raises(ConfigError) as caught:
        _parse(**changes)
    assert words in str(caught.value), str(caught.value)


@pytest.mark.parametrize("epochs", [{"type": "int", "low": 3, "high": 9}, [9, 3, 27], {"type": "fixed", "value": 3}])
def test_min_epochs_must_be_below_every_epochs_the_space_searches(epochs):
    space = {"name": "epochs", "include": ["loss-weights"], "params": {"optim.epochs": epochs}}
    with pytest.raises(ConfigError) as caught:
        _parse(early_stopping={"min_epochs": 3}, space=space)
    assert "early_stopping.min_epochs (3)" in str(caught.value) and "optim.epochs goes down to 3" in str(caught.value)
    assert _parse(early_stopping={"min_epochs": 2}, space=space).early_stopping.min_epochs == 2


def test_the_study_puts_the_rungs_of_each_trials_own_epochs_in_its_config():
    from aam_search.search.rungs import RUNG_WAIT_S, with_rungs

    config = _parse(early_stopping={"min_epochs": 2, "reduction_factor": 3})
    trial = with_rungs(config, {"optim": {"epochs": 27}, "eval": {"probe_epochs": 5}})
    assert trial["eval"] == {"probe_epochs": 5, "rungs": [2, 6, 18], "rung_wait_s": RUNG_WAIT_S}
    assert with_rungs(config, {})["eval"]["rungs"] == [2, 6, 18]  # the trainer's default 20 epochs
    assert with_rungs(_parse(), {"optim": {"epochs": 27}}) == {"optim": {"epochs": 27}}  # off: untouched
