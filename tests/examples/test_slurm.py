"""The SLURM example (``examples/slurm/``) run for real on a one-node cluster.

``sbatch prepare.sbatch`` (feature extraction under ``accelerate launch``, then ``aam-search
start --prepare-only``) and, depending on it, ``sbatch workers.sbatch`` (an array of
``aam-search worker`` jobs), as the README says, on a tiny synthetic dataset with the study
in a throwaway PostgreSQL; the study must finish its budget. The example's scripts and
configs are used as they are; only the site settings change: the paths and the storage (the
scripts' ``AAM_*`` variables, the configs' paths), the encoder (the built-in tiny one: no
model weights here) and the trial size, the resources on the sbatch command line (no GPUs,
two CPUs), tracking is off (no MLflow server) and so is the utility-drop constraint (the
raw utility of the tiny dataset is 0).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from aam_search.features.config import load_extract_config
from aam_search.search.config import load_study_config
from aam_search.search.record import slot_of
from tests.conftest import ENCODER
from tests.examples.slurm import Cluster, slurm  # noqa: F401  (a fixture)
from tests.search.conftest import TINY_TRIAL, complete, load_trials
from tests.search.postgres import postgres_url  # noqa: F401  (a fixture)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "slurm"
N_TRIALS = 4
WORKERS = 2
JOB_S = 240  # bounds for the two jobs; on an idle 2-core machine both take about a minute


def test_extract_and_study_configs_describe_the_same_features():
    """prepare.sbatch extracts with extract.yaml; the study must find that very cache."""
    extract = load_extract_config(EXAMPLE / "extract.yaml")
    study = load_study_config(EXAMPLE / "study.yaml")
    assert extract.manifest == study.data.manifest
    assert extract.encoder == study.data.encoder
    assert extract.clips == study.data.clips
    assert extract.cache_root == (study.data.cache_root or study.workdir / "cache")


def site_configs(folder: Path, manifest: Path, storage: str) -> tuple[Path, Path, dict]:
    """The example's extract.yaml and study.yaml with this machine's site settings."""
    work = folder / "work"
    extract = yaml.safe_load((EXAMPLE / "extract.yaml").read_text())
    extract.update(manifest=str(manifest), cache_root=str(work / "cache"),
                   encoder=ENCODER.model_dump(), clips={**extract["clips"], "stride": 1})  # 24-frame videos
    study = yaml.safe_load((EXAMPLE / "study.yaml").read_text())
    study.pop("tracking_uri")
    study.pop("max_utility_drop")  # the raw utility of 12 tiny videos is 0: no relative drop to bound
    study["data"].update(manifest=str(manifest), encoder=extract["encoder"], clips=extract["clips"])
    study.update(workdir=str(work), storage=storage, track=False, n_trials=N_TRIALS, trial=TINY_TRIAL,
                 space="loss-weights", trial_timeout_s=300)
    (folder / "extract.yaml").write_text(yaml.safe_dump(extract, sort_keys=False))
    (folder / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    return folder / "extract.yaml", folder / "study.yaml", study


def job_output(folder: Path, pattern: str) -> str:
    return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
                     for path in sorted(folder.glob(pattern)))


@pytest.mark.slow
def test_prepare_then_worker_array_finishes_the_budget(postgres_url, slurm: Cluster, small_dataset, tmp_path):
    # (postgres_url first: it is set up before the cluster and torn down after it, so no job
    # outlives the database it writes to)
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file():
        pytest.skip(f"the example's jobs source a virtual environment; {venv} is not one")
    folder = tmp_path / "site"  # the folder the user submits from
    folder.mkdir()
    extract_yaml, study_yaml, study = site_configs(folder, small_dataset, postgres_url)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")},
        "AAM_VENV": str(venv),
        "AAM_EXTRACT_CONFIG": str(extract_yaml),
        "AAM_STUDY_CONFIG": str(study_yaml),
        "AAM_EXTRACT_PROCESSES": "1",
        "AAM_STUDY": study["name"],
        "AAM_STORAGE": postgres_url,
        "AAM_WORKDIR": study["workdir"],
        "PYTHONUNBUFFERED": "1",
        # one intra-op thread per process, as the rest of the suite: on a busy 2-core machine
        # torch's default (a thread per core in every process) made the baseline take 5 min, not 30 s
        "OMP_NUM_THREADS": "1",
    }
    # This node has no GPUs and two CPUs: the resources change on the command line, as on
    # any cluster; the scripts stay as they are.
    prepare = slurm.sbatch(EXAMPLE / "prepare.sbatch", "--gres=none", "--time=10", f"--output={folder}/prepare-%j.out",
                           env=env, cwd=folder)
    workers = slurm.sbatch(EXAMPLE / "workers.sbatch", "--gres=none", "--time=10", f"--array=0-{WORKERS - 1}",
                           f"--dependency=afterok:{prepare}", "--kill-on-invalid-dep=yes",
                           f"--output={folder}/worker-%A_%a.out", env=env, cwd=folder)

    states = slurm.wait_job(prepare, JOB_S)
    assert set(states.values()) == {("COMPLETED", "0:0")}, f"{states}\n{job_output(folder, 'prepare-*.out')}"
    assert f"study {study['name']!r} is ready" in job_output(folder, "prepare-*.out")
    states = slurm.wait_job(workers, JOB_S)
    assert len(states) == WORKERS and set(states.values()) == {("COMPLETED", "0:0")}, \
        f"{states}\n{job_output(folder, 'worker-*.out')}\n{slurm.errors()}"

    trials = load_trials(postgres_url, study["name"])
    done = complete(trials)
    assert len(done) == N_TRIALS, f"{Counter(t.state.name for t in trials)}\n{job_output(folder, 'worker-*.out')}"
    assert len({slot_of(t) for t in done}) == N_TRIALS
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert all(t.user_attrs["out_dir"].startswith(study["workdir"]) for t in done)
    # The cache prepare.sbatch extracted is the one the study used (no second extraction).
    assert len([p for p in Path(study["workdir"], "cache").iterdir() if p.is_dir()]) == 1
