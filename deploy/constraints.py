"""Print deploy/constraints.txt: exact versions of pbxbridge's runtime dependencies (the
``[project] dependencies`` of pyproject.toml and everything they pull in, extras included, for
this platform) as installed in the current environment. The image installs with it, so a
rebuild gets the versions that were tested, not whatever is newest that day.

Regenerate after changing dependencies, from a virtualenv where the tests pass:

    .venv/bin/python deploy/constraints.py > deploy/constraints.txt

Only the runtime closure is written: test and simulator packages (the ``test`` and ``sim``
extras) never reach the image.
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def runtime_closure(requirements: list[str]) -> dict[str, str]:
    pinned: dict[str, str] = {}
    extras_seen: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name == "pbxbridge":
            continue
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            sys.exit(f"{req.name} is not installed here: run this from the project's virtualenv")
        extras = set(req.extras)
        if name in pinned and extras <= extras_seen[name]:
            continue
        pinned[name] = dist.version
        extras_seen[name] = extras_seen.get(name, set()) | extras
        for line in dist.requires or []:
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in extras_seen[name] | {""}):
                dep.marker = None
                todo.append(dep)
    return pinned


def main() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = runtime_closure(project["dependencies"])
    print("# Runtime dependencies of pbxbridge, exact versions (python deploy/constraints.py > deploy/constraints.txt).")
    print(f"# Generated with Python {sys.version_info.major}.{sys.version_info.minor}; used by deploy/Dockerfile.")
    for name in sorted(pinned):
        print(f"{name}=={pinned[name]}")


if __name__ == "__main__":
    main()
