"""constraints.txt, the versions `make setup` installs, covers what pyproject asks for."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
# the extras `make setup` installs (with deepspeed, installed after torch on its own)
SET_UP_EXTRAS = ("dev", "transformers", "deepspeed")
# pinned by the Makefile (a kept CUDA torch must win), so never in the constraints
MAKEFILE_PINS = {"torch", "torchvision"}


def locked() -> dict[str, Version]:
    pins = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt line {number} is not name==version: {line!r}"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def set_up_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra in SET_UP_EXTRAS:
        listed += project["optional-dependencies"][extra]
    return [Requirement(text) for text in listed]


def test_every_requirement_is_locked_within_its_range():
    pins = locked()
    for requirement in set_up_requirements():
        name = canonicalize_name(requirement.name)
        if name in MAKEFILE_PINS:
            continue
        assert name in pins, f"{requirement.name} is in pyproject but not in constraints.txt: run `make lock`"
        assert requirement.specifier.contains(pins[name]), (
            f"constraints.txt has {name}=={pins[name]}, outside pyproject's {requirement}")


def test_torch_stays_with_the_makefile():
    assert not MAKEFILE_PINS & set(locked())
