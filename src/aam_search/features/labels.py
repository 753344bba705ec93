"""Per-video label tensors and the vocabulary behind their integers."""

from __future__ import annotations

from typing import Any

import torch

from aam_search.data.manifest import Manifest

UNLABELLED = -1


def _sorted_values(values: set[str]) -> list[str]:
    if values and all(v.lstrip("-").isdigit() for v in values):
        return sorted(values, key=int)
    return sorted(values)


def label_vocabulary(manifest: Manifest) -> dict[str, Any]:
    """Names for the integer labels, stored in the cache's meta.json."""
    groups = {
        name: _sorted_values({row.groups[name] for row in manifest.rows if row.groups.get(name)})
        for name in manifest.group_names
    }
    return {
        "action_classes": list(manifest.action_classes),
        "attr_names": list(manifest.attr_names),
        "task_names": list(manifest.task_names),
        "task_classes": {name: list(manifest.task_classes(name)) for name in manifest.task_names},
        "group_names": list(manifest.group_names),
        "group_values": groups,
    }


def label_tensors(manifest: Manifest) -> dict[str, torch.Tensor]:
    """split/action/attrs/tasks/groups per video; -1 marks a cell that was left empty."""
    from aam_search.features.cache import SPLIT_CODES

    vocab = label_vocabulary(manifest)
    action_index = {name: i for i, name in enumerate(vocab["action_classes"])}
    task_index = {t: {c: i for i, c in enumerate(cs)} for t, cs in vocab["task_classes"].items()}
    group_index = {g: {v: i for i, v in enumerate(vs)} for g, vs in vocab["group_values"].items()}
    rows = manifest.rows
    count = len(rows)
    split = torch.tensor([SPLIT_CODES[row.split] for row in rows], dtype=torch.int8)
    action = torch.tensor(
        [action_index[row.action] if row.action is not None else UNLABELLED for row in rows],
        dtype=torch.int64,
    )
    attrs = torch.full((count, len(manifest.attr_names)), UNLABELLED, dtype=torch.int8)
    tasks = torch.full((count, len(manifest.task_names)), UNLABELLED, dtype=torch.int64)
    groups = torch.full((count, len(manifest.group_names)), UNLABELLED, dtype=torch.int64)
    for i, row in enumerate(rows):
        for j, name in enumerate(manifest.attr_names):
            if row.attrs.get(name) is not None:
                attrs[i, j] = int(row.attrs[name])
        for j, name in enumerate(manifest.task_names):
            if row.tasks.get(name) is not None:
                tasks[i, j] = task_index[name][row.tasks[name]]
        for j, name in enumerate(manifest.group_names):
            if row.groups.get(name) is not None:
                groups[i, j] = group_index[name][row.groups[name]]
    return {
        "split": split,
        "action": action,
        "attrs": attrs,
        "tasks": tasks,
        "groups": groups,
        "valid": torch.ones(count, dtype=torch.bool),
        "is_image": torch.tensor([row.is_image for row in rows], dtype=torch.bool),
    }
