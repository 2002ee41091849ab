"""The installed `gridflex` console script, run as a site engineer runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

GRIDFLEX = shutil.which("gridflex", path=str(Path(sys.executable).parent))


def gridflex(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert GRIDFLEX is not None, "the gridflex console script is not installed in this venv"
    return subprocess.run(
        [GRIDFLEX, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=60,
        check=False,
    )
