"""Search spaces: presets and user YAML over TrialConfig fields, turned into Optuna distributions.

A space maps dotted trainer-config field paths to parameter specs::

    name: my-space                      # default: the file's stem
    description: optional free text
    include: [loss-weights]             # presets or YAML files (relative to this one) to start from
    exclude: [loss.temperature]         # parameters to drop after the includes
    params:
      loss.w_lc: {type: float, low: 1, high: 1000, log: true}
      adapter.layers: {type: int, low: 1, high: 6, step: 1}
      adapter.kind: {type: categorical, choices: [attention, mlp]}
      adapter.heads: {type: categorical, choices: [4, 8], condition: {param: adapter.kind, in: [attention]}}
      optim.epochs: {type: fixed, value: 10}
      adapter.ffn_mult: [1, 2, 4]       # shorthand: a list is a categorical
      optim.batch_size: 128             # shorthand: a scalar is a fixed value

Types: ``float`` and ``int`` take ``low``, ``high``, ``log`` (default false) and ``step``
(not with log; it must divide the range); ``categorical`` takes ``choices`` (None, bool,
int, float or str, no duplicates); ``fixed`` takes only ``value`` (write a list value as
``{type: fixed, value: [...]}``, since a bare list is a categorical). Any of them may
carry a ``condition``: the parameter is sampled (or, if fixed, set) only when the named
categorical or fixed parameter took one of the listed values. A parameter listed in
``params`` replaces an included one whole.

Every path must be a TrialConfig field (``loss.task_weights.<task>`` included), and
bounds, choices and fixed values must be values the trainer accepts; the
:class:`SpaceError` raised otherwise names the file and the parameter. ``1e-5`` in a
space file reads as a number (plain YAML 1.1 reads it as a string).

Use::

    space = resolve_space("full")                  # or a YAML path, or a mapping
    params = space.suggest(trial)                  # {"loss.w_lc": 12.3, "adapter.kind": "mlp", ...}
    config = merge_overrides(base, space.to_overrides(params))

Fixed values are not Optuna parameters; :meth:`SearchSpace.complete` adds them (and
drops inactive conditionals) to a stored trial's ``params``.
"""

from .load import load_space, preset, resolve_space
from .presets import PRESETS, preset_names
from .spec import (
    Condition,
    ParamSpec,
    SearchSpace,
    SpaceError,
    build_space,
    merge_overrides,
    to_overrides,
    trainer_fields,
)

__all__ = [
    "PRESETS",
    "Condition",
    "ParamSpec",
    "SearchSpace",
    "SpaceError",
    "build_space",
    "load_space",
    "merge_overrides",
    "preset",
    "preset_names",
    "resolve_space",
    "to_overrides",
    "trainer_fields",
]
