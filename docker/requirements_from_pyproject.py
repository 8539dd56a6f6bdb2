"""Print the project's runtime dependencies from pyproject.toml, one requirement per line.

The images install dependencies in their own layer before the source is copied, so a code change
does not reinstall gigabytes. Reading them from pyproject.toml keeps that layer and the package
metadata from drifting apart:

    python docker/requirements_from_pyproject.py pyproject.toml --exclude torch > requirements.txt

``--exclude NAME`` (repeatable) leaves out a distribution installed separately (torch comes from
the PyTorch wheel index for the image's CUDA version). Standard library only: it runs before
anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement ("Ray[default]==2.6" -> "ray")."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a PEP 508 requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def runtime_requirements(pyproject: Path, *, exclude: tuple[str, ...] = ()) -> list[str]:
    """``[project].dependencies`` of ``pyproject`` in file order, minus the names in ``exclude``."""
    with open(pyproject, "rb") as handle:
        project = tomllib.load(handle).get("project", {})
    dependencies = project.get("dependencies")
    if not isinstance(dependencies, list) or not dependencies:
        raise ValueError(f"{pyproject}: [project].dependencies must be a non-empty list.")
    skipped = {requirement_name(name) for name in exclude}
    return [dep.strip() for dep in dependencies if requirement_name(dep) not in skipped]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--exclude", action="append", default=[], metavar="NAME")
    args = parser.parse_args(argv)
    for line in runtime_requirements(args.pyproject, exclude=tuple(args.exclude)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
