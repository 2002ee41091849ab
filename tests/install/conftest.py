"""One fresh install for the install tests: a wheel of the checkout in a new venv."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _host_python() -> str:
    """The host's own Python 3.11+ (/usr/bin/python3, what the guide's `python3 -m venv` takes on
    a Debian host), else this interpreter. A venv runs its base interpreter's standard library:
    one under root's home could not be read by the service user the guide's test runs as."""
    system = Path("/usr/bin/python3")
    if system.exists():
        code = "import sys, venv; print(sys.version_info >= (3, 11))"
        probe = subprocess.run([str(system), "-c", code], capture_output=True, text=True,
                               check=False)  # fmt: skip
        if probe.stdout.strip() == "True":
            return str(system)
    return sys.executable


@pytest.fixture(scope="session")
def venv() -> Iterator[Path]:
    """bin/ of a new venv holding gridflex from a wheel, with nothing but its dependencies. It
    lies in a world-readable folder: the install guide's test runs it as a service user."""
    base = Path(tempfile.mkdtemp(prefix="gridflex-install-"))
    base.chmod(0o755)
    wheels = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w",
                    str(wheels), str(ROOT)], check=True, timeout=300)  # fmt: skip
    (wheel,) = wheels.glob("gridflex-*.whl")
    subprocess.run([_host_python(), "-m", "venv", str(base / "venv")], check=True, timeout=120)
    bin_dir = base / "venv" / "bin"
    subprocess.run([str(bin_dir / "pip"), "install", "--quiet", str(wheel)], check=True,
                   timeout=600)  # fmt: skip
    yield bin_dir
    shutil.rmtree(base, ignore_errors=True)
