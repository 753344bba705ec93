"""The trial side of MO-ASHA rungs: the cheap evaluation at a rung, and obeying the verdict.

At each epoch of ``eval.rungs`` the trial measures its features cheaply (the utility probe
and one fresh attacker with a fixed small budget and a fixed seed, on the trial's protocols,
no cross-fitting or bootstrap) and writes the values as a ``metrics.jsonl`` line under
``protocol.RUNG_KEY``. The trial never decides its own fate: it waits up to
``eval.rung_wait_s`` for the orchestrator's verdict, which is either ``RUNG_PASSED_FILE``
(go on) or ``STOP_REQUEST_FILE``; a stop request is obeyed at the epoch end (checkpoint
kept, status ``pruned``). The file names are the trial protocol's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from aam_search.features.cache import FeatureCache
from aam_search.protocol import RUNG_KEY, RUNG_PASSED_FILE, STOP_REQUEST_FILE
from aam_search.trainer.baseline import evaluate_features, worst_case
from aam_search.trainer.config import EvalConfig
from aam_search.trainer.feature_eval import Transform
from aam_search.trainer.model import count_parameters
from aam_search.trainer.runtime import unwrap

# The cheap evaluation: fixed, so that every trial's rung values are measured alike
# (whatever the trial's own seed or evaluation settings).
RUNG_ATTACKER = "mlp"
RUNG_EPOCHS = 10  # the attacker's and the utility probe's budget
RUNG_SEED = 0
VERDICT_POLL_S = 0.05


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)  # atomic: the trainer never reads half a verdict


def request_stop(trial_dir: Path, *, rung: int, reason: str) -> None:
    """The orchestrator's side: ask the trial in ``trial_dir`` to stop at its next epoch end."""
    _write_atomic(Path(trial_dir) / STOP_REQUEST_FILE, {"rung": rung, "reason": reason})


def let_continue(trial_dir: Path, *, rung: int) -> None:
    """The orchestrator's side: the trial waiting at rung epoch ``rung`` may go on."""
    _write_atomic(Path(trial_dir) / RUNG_PASSED_FILE, {"rung": rung})


def stop_requested(trial_dir: Path) -> dict | None:
    """The trainer's side, at epoch end: the request, if one was written."""
    path = Path(trial_dir) / STOP_REQUEST_FILE
    if not path.is_file():
        return None
    try:
        request = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {"rung": None, "reason": f"unreadable {STOP_REQUEST_FILE}"}
    return request if isinstance(request, dict) else {"rung": None, "reason": f"malformed {STOP_REQUEST_FILE}"}


def _passed(trial_dir: Path, rung: int) -> bool:
    try:
        passed = json.loads((Path(trial_dir) / RUNG_PASSED_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(passed, dict) and isinstance(passed.get("rung"), int) and passed["rung"] >= rung


def await_verdict(trial_dir: Path, rung: int, timeout_s: float,
                  interrupted: Callable[[], bool] = lambda: False) -> dict | None:
    """At rung epoch ``rung``: the stop request, or None once the trial may go on (or no
    verdict came within ``timeout_s``: a trial is never held by a missing orchestrator; or
    ``interrupted()``: a signal arrived, which the training loop then obeys)."""
    return await_verdicts([trial_dir], rung, timeout_s, interrupted)[0]


def await_verdicts(trial_dirs: list[Path], rung: int, timeout_s: float,
                   interrupted: Callable[[], bool] = lambda: False) -> list[dict | None]:
    """:func:`await_verdict` for several trials waiting at the same rung (a stack's members),
    under one deadline: each one's stop request or None, once every one has its verdict."""
    deadline = time.monotonic() + timeout_s
    requests: list[dict | None] = [None] * len(trial_dirs)
    waiting = set(range(len(trial_dirs)))
    while True:
        for k in list(waiting):
            requests[k] = stop_requested(trial_dirs[k])
            if requests[k] is not None or _passed(trial_dirs[k], rung):
                waiting.discard(k)
        if not waiting or time.monotonic() >= deadline or interrupted():
            return requests
        time.sleep(VERDICT_POLL_S)


def rung_eval_config(config: EvalConfig) -> EvalConfig:
    """The trial's evaluation settings made cheap: one attacker, a small budget, no folds
    and no bootstrap."""
    return config.model_copy(update={"attackers": (RUNG_ATTACKER,), "attacker_epochs": RUNG_EPOCHS,
                                     "probe_epochs": RUNG_EPOCHS, "crossfit_folds": 0, "bootstrap_resamples": 0})


def rung_result(cache: FeatureCache, transform: Transform | None, config: EvalConfig,
                adapter_parameters: int) -> dict[str, Any]:
    """The cheap evaluation, shaped like ``result.json`` where objectives read it
    (search.pareto.objective_value): utility, leakage, measured tasks and protocols."""
    measured = evaluate_features(cache, transform, rung_eval_config(config), seed=RUNG_SEED)
    tasks = {name: {"top1": task["top1"]} for name, task in measured["tasks"].items()}
    privacy = {name: {"cmap": leak["cmap"]} for name, leak in measured["privacy"].items() if leak}
    utility = next(iter(tasks.values()))["top1"] if tasks else float("nan")
    _, leakage, _ = worst_case(measured["privacy"])
    return {"utility": utility, "leakage": leakage, "combined_score": (utility + (1 - leakage)) / 2,
            "adapter_parameters": adapter_parameters, "measured": {"tasks": tasks, "privacy": privacy}}


def evaluate_at_rung(recipe: Any, rung: int, fit_eraser: Callable) -> dict[str, Any]:
    """Rank 0: the recipe's features now (the adapter, then an eraser fitted afresh when the
    trial uses one, as at the end), measured cheaply and written to metrics.jsonl. A stack
    member's recipe is measured alike, once its stacked weights were written back into it."""
    started = time.perf_counter()
    accelerator = recipe.accelerator
    adapter = unwrap(accelerator, recipe.model).adapter
    was_training = adapter.training
    adapter.eval()
    device = accelerator.device

    def adapted(tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), accelerator.autocast():
            return adapter(tokens.to(device)).float()

    transform = adapted
    try:
        if recipe.config.loss.eraser:
            eraser = fit_eraser(recipe.cache, adapted).to(device)

            def transform(tokens: torch.Tensor) -> torch.Tensor:
                return eraser(adapted(tokens))

        values = rung_result(recipe.cache, transform, recipe.config.eval, count_parameters(adapter))
    finally:
        adapter.train(was_training)
    seconds = time.perf_counter() - started
    recipe.timings["rung_eval_s"] = recipe.timings.get("rung_eval_s", 0.0) + seconds
    line = {"epoch": rung - 1, "seconds": seconds, "values": values}
    recipe.reporter.epoch({RUNG_KEY: line})
    return line


def rung_requests(recipes: list[Any], epochs_done: int, fit_eraser: Callable,
                  interrupted: Callable[[], bool] = lambda: False,
                  failed: Callable[[int, Exception], None] | None = None) -> list[tuple[dict | None, dict | None]]:
    """Rank 0, at an epoch end, for one trial or a stack's members: each recipe's (stop
    request or None, rung line or None). Every recipe at a rung epoch is evaluated first, then
    all their verdicts are awaited together; the others only read a stop request, if any.
    A recipe without ``eval.rungs`` is left alone (None, None). ``failed(k, error)``, when
    given, takes a recipe's failed evaluation (it is then left alone) instead of raising it."""
    lines: list[dict | None] = []
    broken: set[int] = set()
    for k, recipe in enumerate(recipes):
        line = None
        if epochs_done in recipe.config.eval.rungs:
            try:
                line = evaluate_at_rung(recipe, epochs_done, fit_eraser)
            except Exception as error:
                if failed is None:
                    raise
                failed(k, error)
                broken.add(k)
        lines.append(line)
    at_rung = [k for k, line in enumerate(lines) if line is not None]
    verdicts = await_verdicts([recipes[k].out_dir for k in at_rung], epochs_done,
                              max((recipes[k].config.eval.rung_wait_s for k in at_rung), default=0.0), interrupted)
    requests: list[dict | None] = [None] * len(recipes)
    for k, request in zip(at_rung, verdicts):
        requests[k] = request
    for k, recipe in enumerate(recipes):
        if lines[k] is None and recipe.config.eval.rungs and k not in broken:
            requests[k] = stop_requested(recipe.out_dir)
    return list(zip(requests, lines))


def pruned_fields(request: dict | None, line: dict | None) -> dict[str, Any]:
    """The result.json fields of a trial stopped by the study: its rung, why, and the
    rung's values (None when the stop was read at an epoch end that was not a rung)."""
    request = request or {}
    return {"rung": request.get("rung"), "pruned_reason": request.get("reason"),
            "rung_values": line["values"] if line else None}


def rung_epoch_end(recipe: Any, epochs_done: int, fit_eraser: Callable) -> dict[str, Any] | None:
    """The recipe's epoch-end hook: the rung evaluation when ``epochs_done`` is a rung, then
    the orchestrator's verdict. Returns the result fields of a pruned stop (the checkpoint
    already saved), or None to go on. Every rank returns alike (rank 0 reads the files)."""
    config = recipe.config
    if not config.eval.rungs:
        return None
    accelerator = recipe.accelerator
    request, line = None, None
    if accelerator.is_main_process:
        [(request, line)] = rung_requests([recipe], epochs_done, fit_eraser, lambda: recipe.stop_signal is not None)
    flag = torch.tensor([0.0 if request is None else 1.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, reduction="sum")  # every rank stops together
    if float(flag[0]) == 0:
        return None
    if accelerator.is_main_process and config.save_adapter:
        recipe.save()  # a pruned trial keeps its checkpoint
    return pruned_fields(request, line)
