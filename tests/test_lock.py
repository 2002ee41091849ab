"""The lock and pyproject.toml agree: every requirement pyproject.toml declares (the service's
and every extra's, `dev` included) is pinned in the lock at a version it admits, and the lock
pins nothing as gridflex's own requirement that pyproject.toml no longer asks for. Refresh with
`make lock`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)(?:\s*;\s*([^\\]+?))?\s*\\?$")
VIA_US = re.compile(r"^\s+#\s+(?:via\s+)?gridflex \(pyproject\.toml\)$")
# the lock is universal: each requirement must hold on the Pythons gridflex supports
PYTHONS = ("3.11", "3.12", "3.13")


def _pins(lock: Path) -> tuple[dict[str, list[tuple[Version, Marker | None]]], set[str]]:
    """name -> [(version, marker)], and the names the lock says gridflex asked for itself."""
    pins: dict[str, list[tuple[Version, Marker | None]]] = {}
    ours: set[str] = set()
    current = ""
    for line in lock.read_text().splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match[1])
            marker = Marker(match[3]) if match[3] else None
            pins.setdefault(current, []).append((Version(match[2]), marker))
        elif VIA_US.match(line):
            ours.add(current)
    return pins, ours


def _requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """pyproject.toml's requirements with the extras asked, `gridflex[...]` followed."""
    found = [Requirement(r) for r in PYPROJECT["dependencies"]]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in PYPROJECT["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == "gridflex":
                todo.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


@pytest.mark.parametrize(
    ("lock_name", "extras"),
    [("requirements.lock", ()), ("requirements-dev.lock", ("dev",))],
)
def test_the_lock_pins_every_requirement_at_a_version_pyproject_admits(
    lock_name: str, extras: tuple[str, ...]
) -> None:
    pins, ours = _pins(ROOT / lock_name)
    wanted = _requirements(extras)
    problems = []
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        for python in PYTHONS:
            env = {"python_version": python, "python_full_version": f"{python}.0",
                   "sys_platform": "linux", "platform_system": "Linux"}  # fmt: skip
            if requirement.marker and not requirement.marker.evaluate(env):
                continue
            versions = [v for v, m in pins.get(name, []) if m is None or m.evaluate(env)]
            if not versions:
                problems.append(f"{requirement} is not in {lock_name} (Python {python})")
            elif not all(requirement.specifier.contains(v, prereleases=True) for v in versions):
                problems.append(f"{lock_name} pins {name}=={versions} outside {requirement}")
    stale = ours - {canonicalize_name(r.name) for r in wanted}
    problems += [f"{lock_name} still pins {n} for gridflex, which no longer asks for it"
                 for n in sorted(stale)]  # fmt: skip
    assert not problems, "run `make lock`:\n" + "\n".join(problems)


def test_every_pin_carries_a_hash() -> None:
    for lock in ("requirements.lock", "requirements-dev.lock"):
        text = (ROOT / lock).read_text()
        entries = re.split(r"\n(?=[A-Za-z0-9])", text.strip())
        unhashed = [e.splitlines()[0] for e in entries if "--hash=sha256:" not in e]
        assert not unhashed, f"{lock}: {unhashed}"


def test_a_requirement_outside_the_lock_is_found(tmp_path: Path) -> None:
    """The check itself: a floor raised past the pinned version is reported."""
    lock = tmp_path / "requirements.lock"
    pin = "pymodbus==3.9.2 \\\n    --hash=sha256:00\n"
    lock.write_text(pin + "    # via gridflex (pyproject.toml)\n")
    pins, ours = _pins(lock)
    assert ours == {"pymodbus"}
    ((version, _),) = pins["pymodbus"]
    assert not Requirement("pymodbus>=3.10,<4").specifier.contains(version)
