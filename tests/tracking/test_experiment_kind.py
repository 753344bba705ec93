"""The study's experiment opens in the MLflow UI's "Model training" view, not the GenAI one."""

from __future__ import annotations

from aam_search.tracking.store import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    connect,
    default_tracking_uri,
    ensure_experiment,
    experiment_name,
)


def test_the_study_experiment_is_a_model_training_one(tracked):
    experiment = tracked.client().get_experiment(tracked.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == "custom_model_development" == EXPERIMENT_KIND
    assert experiment.tags["aam.study"] == "tiny"


def test_an_experiment_without_a_kind_gets_it_and_a_chosen_kind_is_kept(tmp_path):
    client = connect(default_tracking_uri(tmp_path))
    old = client.create_experiment(experiment_name("old"))  # made before the kind was set
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    assert ensure_experiment(client, experiment_name("old"), None, tags={"aam.study": "old"}) == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert client.get_experiment(old).tags["aam.study"] == "old"

    chosen = client.create_experiment(experiment_name("chosen"), tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert ensure_experiment(client, experiment_name("chosen"), None) == chosen
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"
