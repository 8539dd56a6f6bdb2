"""Small explicit registries read through one lookup that suggests close matches."""

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeVar

from motorsearch.errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return " Did you mean 'x'?" for the closest choice, or "" when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def lookup(registry: Mapping[str, T], name: str, *, key: str) -> T:
    """Return ``registry[name]``; an unknown name raises ConfigError naming ``key`` and the choices."""
    if name in registry:
        return registry[name]
    choices = ", ".join(sorted(registry))
    raise ConfigError(
        f"`{key}` must be one of {choices}, but got {key}={name!r}.{did_you_mean(name, registry)}"
    )
