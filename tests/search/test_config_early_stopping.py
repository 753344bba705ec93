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


def test_a_study_with_early_stopping_is_refused_until_the_loop_prunes(tmp_path):
    # Accepted by the config, but running it would silently train every trial in full.
    from aam_search.search.orchestrator import Orchestrator

    config = _parse(early_stopping={"min_epochs": 2}, workdir=str(tmp_path))
    with pytest.raises(ConfigError, match="early_stopping: MO-ASHA is not applied"):
        Orchestrator(config).prepare()
