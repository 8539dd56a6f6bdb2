"""Small explicit registries read through one lookup that suggests close matches."""

import difflib
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

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


def config_registries() -> dict[str, Mapping[str, Any]]:
    """The config fields whose values name registry entries: checked when a config is loaded for
    training or a search, before any data is prepared (a trial would only fail when it builds them)."""
    from motorsearch.losses import LOSSES
    from motorsearch.model.presets import PRESETS

    return {"loss.name": LOSSES, "model.preset": PRESETS}


def check_registered(cfg: Any, *, source: str) -> None:
    """ConfigError (naming ``source``, the key and the choices) when ``cfg`` names an unknown loss or preset."""
    for dotted, registry in config_registries().items():
        value = cfg.get(dotted)
        if value not in registry:
            raise ConfigError(f"{source}: `{dotted}` must be one of {', '.join(sorted(registry))}, but got "
                              f"{dotted}={value!r}.{did_you_mean(str(value), registry)}")
