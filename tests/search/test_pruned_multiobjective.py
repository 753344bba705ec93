"""Optuna 5's TPE and NSGA-II go on asking after PRUNED trials in a 2-objective study
(optuna#5260 reported a crash in 2024). Trial.report raises for multi-objective studies, so a
pruned trial carries its rung values as a user attr, never as intermediate values."""

import optuna
import pytest

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_report_raises_for_multi_objective():
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    with pytest.raises(NotImplementedError):
        trial.report(0.5, step=1)


@pytest.mark.parametrize("sampler", [lambda: optuna.samplers.TPESampler(seed=0, n_startup_trials=3),
                                     lambda: optuna.samplers.NSGAIISampler(seed=0, population_size=4)],
                         ids=["tpe", "nsga2"])
def test_samplers_accept_pruned_trials(sampler):
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler())
    for index in range(24):
        trial = study.ask()
        x = trial.suggest_float("x", 0, 1)
        y = trial.suggest_int("y", 0, 3)
        if index % 3 == 1:
            trial.set_user_attr("aam:rung", {"epoch": 1, "values": [x, y]})
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, [x, float(y) + x])
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == 8
    assert all(t.values is None for t in study.trials if t.state == optuna.trial.TrialState.PRUNED)
