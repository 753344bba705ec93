"""The one YAML reader of every config file: trial, study, extraction and search-space files.

A ``yaml.SafeLoader`` (nothing is ever constructed but plain data) with two changes:

- a key given twice in one mapping is refused, naming the key and its line (plain YAML
  keeps the last one silently, so ``epochs: 5`` further down would win unnoticed);
- ``1e-5`` reads as a number (YAML 1.1 wants a dot, ``1.0e-5``, and reads it as a string).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from aam_search.errors import AamSearchError


class DuplicateKeyError(AamSearchError, yaml.YAMLError):
    """A mapping that gives one key twice; the message names the key and both lines."""

    def __init__(self, key: Any, first_line: int, line: int) -> None:
        super().__init__(f"line {line}: key {key!r} is given twice (first on line {first_line})")
        self.key, self.first_line, self.line = key, first_line, line


class StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads ``1e-5`` as a float."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if first is not None:
                raise DuplicateKeyError(key, first, line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


StrictSafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text with :class:`StrictSafeLoader`; raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass


__all__ = ["DuplicateKeyError", "StrictSafeLoader", "load_yaml"]
