"""Faults around the trials rather than in them: a stalled tracking callback, a shared input that
disappears, an unwritable trials folder, two studies in one workdir, and the messages the
user gets about each."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from aam_search.cli import main
from aam_search.protocol import FAILURE_KIND, INPUT_FAILURE
from aam_search.search.callbacks import TrialCompleted, TrialFailed, TrialStarted, TunerCallback
from aam_search.search.orchestrator import Orchestrator, trial_out_dir
from aam_search.search.record import ATTEMPT, REASON, RECOVERED_FROM, RECOVERED_PREFIX, SLOT, STALE_REASON, slot_of
from aam_search.search.recovery import Verdict, keep_result
from tests.search.conftest import Recorder, complete, run_study
from tests.search.test_failures import another_worker_fails_trial_0, fake_trials

GOOD = {"status": "completed", "reason": None, "utility": 0.5, "leakage": 0.4, "utility_drop": 0.0}


def counting_trial(runs: Path, before: str = "", seconds: float = 0.0) -> str:
    """Code of a fake trial that appends its folder to ``runs``, runs ``before``, sleeps and
    writes a good result."""
    return f"""
import json, sys, time
from pathlib import Path
out = Path(sys.argv[1])
with open({str(runs)!r}, "a") as handle:
    handle.write(str(out) + "\\n")
{before}
time.sleep({seconds})
(out / "result.json").write_text(json.dumps({GOOD!r}))
"""


def events_of(orchestrator: Orchestrator) -> Recorder:
    seen = Recorder()
    orchestrator.callbacks.append(seen)
    return seen


# ---------------------------------------------------------------- item 2: heartbeats
def test_a_stalled_tracking_hook_neither_fails_nor_reruns_a_healthy_trial(make_study, monkeypatch, tmp_path):
    """A hung MLflow request (here a hook that blocks for twice the grace period) must not stop
    the heartbeats: no worker may see the trial stale, and it completes once."""
    runs = tmp_path / "runs.txt"
    fake_trials(monkeypatch, counting_trial(runs, seconds=1))
    config = make_study(name="stalled", n_trials=1, max_parallel=1, heartbeat_interval_s=1, heartbeat_grace_s=4)
    orchestrator = Orchestrator(config)
    seen_stale: list[int] = []

    class StalledMlflow(TunerCallback):
        def on_trial_started(self, event: TrialStarted) -> None:
            time.sleep(8)
            study = orchestrator.study  # what any other worker's stale check would find now
            seen_stale.extend(study._storage._get_stale_trial_ids(study._study_id))

    orchestrator.callbacks.append(StalledMlflow())
    _, outcome = run_study(config, orchestrator)
    trials = orchestrator.study.get_trials()
    assert seen_stale == [], "the trial looked dead while the callback blocked"
    assert [t.state for t in trials] == [TrialState.COMPLETE]
    assert len(runs.read_text().splitlines()) == 1, "the trial was run again"
    assert (outcome.completed, outcome.failed) == (1, 0)


def test_a_worker_never_fails_its_own_trial_as_stale(make_study, monkeypatch, tmp_path):
    """Even with no beat at all reaching the database, the worker running a trial does not
    fail it: only the other workers may judge it dead."""
    runs = tmp_path / "runs.txt"
    fake_trials(monkeypatch, counting_trial(runs, seconds=6))
    record = optuna.storages.RDBStorage.record_heartbeat
    beaten: set[int] = set()

    def first_beat_only(storage, trial_id):  # the database takes the first beat, then no more
        if trial_id not in beaten:
            beaten.add(trial_id)
            record(storage, trial_id)

    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", first_beat_only)
    config = make_study(name="unbeaten", n_trials=1, max_parallel=1, heartbeat_interval_s=1, heartbeat_grace_s=2)
    orchestrator, outcome = run_study(config)
    assert [t.state for t in orchestrator.study.get_trials()] == [TrialState.COMPLETE]
    assert len(runs.read_text().splitlines()) == 1


@pytest.mark.parametrize("max_retry", [1, 0], ids=["re-run-queued", "no-retries-left"])
def test_a_result_whose_trial_was_failed_meanwhile_is_kept(make_study, monkeypatch, tmp_path, max_retry):
    """Another worker failed our trial as stale; its result.json is still told to Optuna: as
    the queued re-run's value (which then never runs), or as a trial of its own."""
    runs = tmp_path / "runs.txt"
    fake_trials(monkeypatch, counting_trial(runs, seconds=1.5))
    config = make_study(name="stolen", n_trials=1, max_parallel=1)
    orchestrator = Orchestrator(config)
    orchestrator.callbacks.append(another_worker_fails_trial_0(orchestrator, max_retry=max_retry))
    seen = events_of(orchestrator)
    _, outcome = run_study(config, orchestrator)
    trials = orchestrator.study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert len(runs.read_text().splitlines()) == 1, "the measured configuration was trained again"
    kept = trials[1]
    assert kept.values == [GOOD["utility"], GOOD["leakage"]] and kept.params == trials[0].params
    assert (kept.user_attrs[RECOVERED_FROM], slot_of(kept)) == (0, 0)
    assert kept.user_attrs["out_dir"] == str(trial_out_dir(config, 0))
    failed = seen.of(TrialFailed)
    assert [p.number for p in failed] == [0] and failed[0].retried is False
    assert [p.number for p in seen.of(TrialCompleted)] == [1]
    assert outcome.completed == 1


def test_a_result_is_kept_on_the_study_when_its_rerun_already_runs(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'k.db'}")
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr(SLOT, 0)
    study.tell(trial, state=TrialState.FAIL)  # failed as stale by another worker...
    original = study.get_trials()[0]
    study.add_trial(optuna.trial.create_trial(  # ...which runs its re-run now
        state=TrialState.RUNNING, params=original.params, distributions=original.distributions,
        user_attrs={SLOT: 0}))
    told, where = keep_result(study, original, Verdict([0.5, 0.4], {"utility": 0.5}))
    assert told is None and "trial 1" in where
    kept = study.user_attrs[f"{RECOVERED_PREFIX}0"]
    assert kept["values"] == [0.5, 0.4] and kept[RECOVERED_FROM] == 0
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.RUNNING]


# ---------------------------------------------------------------- item 7: shared inputs
@pytest.fixture
def own_cache(study_cache, tmp_path) -> Path:
    """A copy of the study cache that a test may delete."""
    return Path(shutil.copytree(study_cache.path, tmp_path / "cache"))


CACHE_CHECKING_TRIAL = """
import json, sys, yaml
from pathlib import Path
out = Path(sys.argv[1])
cache = Path(yaml.safe_load((out / "trial.yaml").read_text())["cache"])
{before}
if not (cache / "meta.json").is_file():
    result = {{"status": "failed", "reason": f"CacheError: {{cache}}: not a feature cache", "failure_kind": "input"}}
    (out / "result.json").write_text(json.dumps(result))
    sys.exit(2)
(out / "result.json").write_text(json.dumps({good}))
{after}
"""


def test_a_cache_deleted_mid_study_stops_it_without_spending_trials(make_study, monkeypatch, own_cache, capsys,
                                                                     write_study, tmp_path):
    # The first trial completes, then the cache vanishes (the user deleted it).
    fake_trials(monkeypatch, CACHE_CHECKING_TRIAL.format(
        before="", after="import shutil; shutil.rmtree(cache)", good=repr(GOOD)))
    study_yaml = write_study(name="nocache", n_trials=3, max_parallel=1, max_retries=1,
                             data={"cache": str(own_cache)})
    code = main(["start", "--config", str(study_yaml)])
    shown = capsys.readouterr().out
    assert code == 1
    assert "study stopped" in shown and "feature cache" in shown and str(own_cache) in shown
    trials = optuna.load_study(study_name="nocache", storage=f"sqlite:///{tmp_path / 'work' / 'optuna.db'}").trials
    # The trial that deleted it had already measured; no further trial was asked for.
    assert [t.state for t in trials] == [TrialState.COMPLETE]


def test_a_trial_that_finds_the_cache_broken_stops_the_study_and_keeps_its_slot(make_study, monkeypatch, own_cache):
    # Each trial's cache vanishes under it (after the orchestrator's check): it reports an
    # input failure, the study stops, and the trial waits in its slot, not using a retry.
    fake_trials(monkeypatch, CACHE_CHECKING_TRIAL.format(
        before="import shutil; shutil.rmtree(cache, ignore_errors=True)", after="", good=repr(GOOD)))
    config = make_study(name="brokencache", n_trials=3, max_parallel=1, max_retries=0,
                        data={"cache": str(own_cache)})
    backup = own_cache.with_name("backup")
    shutil.copytree(own_cache, backup)
    orchestrator, outcome = run_study(config)
    trials = orchestrator.study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs[REASON].startswith("failed: CacheError")
    assert (slot_of(trials[1]), trials[1].user_attrs.get(ATTEMPT, 0)) == (0, 0)  # same slot, no retry used
    assert outcome.stopped and "trial 0 found a shared input missing or broken" in outcome.stopped
    assert outcome.completed == 0

    # The cache is back: the same study settles its whole budget (3 trials).
    shutil.rmtree(own_cache, ignore_errors=True)
    shutil.copytree(backup, own_cache)
    fake_trials(monkeypatch, CACHE_CHECKING_TRIAL.format(before="", after="", good=repr(GOOD)))
    orchestrator, outcome = run_study(config)
    assert outcome.stopped is None and outcome.completed == 3
    trials = orchestrator.study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    assert sorted(slot_of(t) for t in complete(trials)) == [0, 2, 3]  # slot 0 run by its re-run, trial 1


def test_the_trainer_marks_a_missing_cache_as_an_input_failure(tmp_path):
    from aam_search.features.cache import CacheError
    from aam_search.trainer.config import parse_trial_config
    from aam_search.trainer.train import run_trial

    config = parse_trial_config({"cache": str(tmp_path / "gone"), "optim": {"epochs": 1}})
    with pytest.raises(CacheError):
        run_trial(config, tmp_path / "out")
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "failed" and result[FAILURE_KIND] == INPUT_FAILURE


# ---------------------------------------------------------------- item 8: one workdir, two studies
def test_two_studies_in_one_workdir_keep_their_own_trial_folders(make_study, monkeypatch, tmp_path):
    fake_trials(monkeypatch, """
        import json, sys
        from pathlib import Path
        out = Path(sys.argv[1])
        utility = 0.7 if "alpha" in str(out) else 0.3
        result = {"status": "completed", "reason": None, "utility": utility, "leakage": 0.4}
        (out / "result.json").write_text(json.dumps(result))
    """)
    folders = {}
    for name in ("alpha", "beta"):
        orchestrator, _ = run_study(make_study(name=name, n_trials=1, max_parallel=1))
        (trial,) = orchestrator.study.get_trials()
        folders[name] = Path(trial.user_attrs["out_dir"])
    assert folders["alpha"] != folders["beta"]
    assert folders["alpha"] == tmp_path / "work" / "trials" / "alpha" / "trial-0000"
    assert json.loads((folders["alpha"] / "result.json").read_text())["utility"] == 0.7
    assert json.loads((folders["beta"] / "result.json").read_text())["utility"] == 0.3


# ---------------------------------------------------------------- honest messages
def test_will_be_rerun_is_said_only_when_a_rerun_is_queued(make_study, monkeypatch, capsys):
    from aam_search.search.live import StudyView

    fake_trials(monkeypatch, "import sys; sys.exit(3)")
    config = make_study(name="honest", n_trials=1, max_parallel=1, max_retries=1)
    seen = Recorder()
    orchestrator = Orchestrator(config, callbacks=[StudyView(), seen])
    run_study(config, orchestrator)
    assert [p.retried for p in seen.of(TrialFailed)] == [True, False]
    assert capsys.readouterr().out.count("(will be re-run)") == 1


def test_a_trial_failed_by_the_heartbeat_check_shows_why(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="beaten", storage=url, directions=["maximize", "minimize"])
    trial = study.ask()
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # what a stale check does
    assert main(["status", "beaten", "--storage", url]) == 0
    shown = capsys.readouterr().out
    assert f"trial 0 failed: {STALE_REASON}" in shown and "failed: ?" not in shown


def test_start_exits_1_when_every_trial_failed(write_study, monkeypatch, capsys):
    fake_trials(monkeypatch, "import sys; sys.exit(3)")
    study_yaml = write_study(name="allfail", n_trials=2, max_parallel=1, max_retries=0)
    assert main(["start", "--config", str(study_yaml)]) == 1
    assert "every trial failed (2)" in capsys.readouterr().out


def test_an_unwritable_trials_folder_stops_the_study_and_leaves_no_trial_running(write_study, monkeypatch,
                                                                                 capsys, tmp_path):
    fake_trials(monkeypatch, "pass")
    study_yaml = write_study(name="readonly", n_trials=2, max_parallel=1)
    blocker = tmp_path / "work" / "trials"  # a file where the trials folder must go
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    assert main(["start", "--config", str(study_yaml)]) == 1
    shown = capsys.readouterr().out
    folder = str(blocker / "readonly" / "trial-0000")
    assert "study stopped" in shown and folder in shown
    trials = optuna.load_study(study_name="readonly", storage=f"sqlite:///{tmp_path / 'work' / 'optuna.db'}").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]  # never left RUNNING
    assert folder in trials[0].user_attrs[REASON]


# ---------------------------------------------------------------- item 7: the storage breaks mid-study
def test_a_storage_that_breaks_mid_study_stops_it_in_one_line_and_a_restart_finishes(make_study, monkeypatch,
                                                                                    tmp_path):
    """The database going away while a trial trains: the trial process is stopped (never left
    training unwatched), the error is one StorageError line without the password, and once the
    database is back a new start re-runs the unfinished trial in its slot."""
    from sqlalchemy.exc import OperationalError

    from aam_search.search.storage import StorageError

    runs = tmp_path / "runs.txt"
    fake_trials(monkeypatch, counting_trial(runs, seconds=3))
    config = make_study(name="broken-db", n_trials=1, max_parallel=1, heartbeat_interval_s=1, heartbeat_grace_s=2)
    orchestrator = Orchestrator(config)
    started: list[Path] = []

    class StorageGoesAway(TunerCallback):
        def on_trial_started(self, event: TrialStarted) -> None:
            started.append(event.out_dir)

            def broken(*args, **kwargs):
                raise OperationalError("SELECT trials", {}, Exception("server closed the connection unexpectedly"))

            monkeypatch.setattr(orchestrator.study, "get_trials", broken)

    orchestrator.callbacks.append(StorageGoesAway())
    with pytest.raises(StorageError) as caught:
        run_study(config, orchestrator)
    message = str(caught.value)
    assert "failed mid-study" in message and "server closed the connection" in message and "\n" not in message
    assert started
    assert all(running.finished() for running, _ in orchestrator.running.values()), "a trial was left training"
    monkeypatch.undo()  # the database is back
    fake_trials(monkeypatch, counting_trial(runs))
    time.sleep(2.5)  # past the grace period: the dead start's trial is stale
    _, outcome = run_study(config)
    trials = optuna.load_study(study_name="broken-db", storage=config.storage_url).get_trials()
    assert outcome.completed == 1
    assert {slot_of(t) for t in complete(trials)} == {0}
