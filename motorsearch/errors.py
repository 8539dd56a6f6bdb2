"""The exception hierarchy.

Every error caused by what the user gave us (a YAML file, a data folder, a CLI flag, a model
file) is an ``InputError``: the CLI prints its message and exits with code 2, no traceback.
Anything else is a bug or an environment failure and keeps its traceback.
"""


class MotorsearchError(Exception):
    """Base class of every error motorsearch raises on purpose."""


class InputError(MotorsearchError):
    """Bad user input. The message names the file, key or row, the rule and the value."""


class ConfigError(InputError):
    """A configuration (experiment or search-space YAML, or a ``--set`` override) is invalid."""


class DataError(InputError):
    """A dataset on disk is malformed: missing slices, bad CSV rows, unreadable volumes."""


class ModelFileError(InputError):
    """A model file is not one of ours, is corrupted, or fails its checksum."""


class TrainingDiverged(MotorsearchError):
    """The loss became NaN or infinite."""
