"""Every use of Optuna's private API, in one place.

The tuner loop needs a few things Optuna keeps behind a leading underscore: a study's
storage and id, a trial's storage id, the storage's stale-trial query, the storage under
Optuna's cache, the hypervolume of a point set. Each is one small typed function here, so
an Optuna upgrade that moves one breaks this module (and its tests) alone.
``tests/test_layers.py`` fails if a private Optuna attribute is used anywhere else in src/.
"""

from __future__ import annotations

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial


def storage_of(study: optuna.Study) -> BaseStorage:
    """The study's storage (Optuna's cache in front of an RDB storage, if it added one)."""
    return study._storage


def rdb_storage_of(study: optuna.Study) -> BaseStorage:
    """The storage under Optuna's cache: the one holding the database engine."""
    return getattr(study._storage, "_backend", study._storage)


def study_id(study: optuna.Study) -> int:
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The trial's id in its storage (not its number in the study)."""
    return trial._trial_id


def frozen(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> FrozenTrial:
    """The trial as the storage holds it now (its state, attributes, params)."""
    return study._storage.get_trial(trial._trial_id)


def frozen_by_number(study: optuna.Study, number: int) -> FrozenTrial:
    storage = study._storage
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))


def trial_of(study: optuna.Study, trial: FrozenTrial) -> optuna.Trial:
    """A live ``optuna.Trial`` handle on a stored trial (to tell it a result)."""
    return optuna.Trial(study, trial._trial_id)


def stale_trial_ids(study: optuna.Study) -> list[int]:
    """Ids of the study's RUNNING trials whose heartbeat is older than the grace period."""
    return list(study._storage._get_stale_trial_ids(study._study_id))


def heartbeat_enabled(storage: BaseStorage) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


def compute_hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """The hypervolume dominated by ``points`` (minimisation) up to ``reference``."""
    from optuna._hypervolume import compute_hypervolume as optuna_hypervolume

    return float(optuna_hypervolume(points, reference))
