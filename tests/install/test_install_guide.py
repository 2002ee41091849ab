"""docs/install.md, followed as written: every `sh` command of the guide runs here, in order, in a
scratch root (its /etc/gridflex, /var/lib/gridflex and /opt/gridflex under a temporary folder),
with a system user the guide's `useradd` creates. The service user is not root: check-config, the
trial run, status, events and audit all run as it, with the env file read by root as systemd
reads it. Before the state directory exists, check-config refuses the site file and names the
one-line fix; that line, run, makes it pass.

Needs root (the guide's `sudo`): `make test-install` in CI.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers.peers import Broker, free_port
from tests.helpers.status_page import wait_for_priced_page

pytestmark = [pytest.mark.install, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "install.md"
SERVICE_USER = "gridflex"  # the guide's name for it
HMAC = "an-hmac-key-of-at-least-thirty-two-bytes"


def guide_commands() -> list[str]:
    """Every line of every ```sh block of the guide, in order."""
    commands, inside = [], False
    for line in GUIDE.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            inside = stripped == "```sh"
            continue
        if inside and stripped:
            commands.append(stripped)
    return commands


class Guide:
    """The guide's commands with the scratch root's paths and the test's user name."""

    def __init__(self, root: Path, user: str, gridflex: Path) -> None:
        self.root, self.user, self.gridflex = root, user, gridflex
        self.done: list[str] = []

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def words(self, command: str) -> list[str]:
        words = shlex.split(command)
        assert words[0] == "sudo", f"the guide runs this without sudo: {command}"
        return [self._word(word) for word in words[1:]]

    def _word(self, word: str) -> str:
        if word == "/opt/gridflex/bin/gridflex":
            return str(self.gridflex)
        if word.startswith(("/etc/gridflex", "/var/lib/gridflex")):
            return str(self.path(word))
        return self.user if word == SERVICE_USER else word  # the user name, standing alone

    def run(self, command: str, *, check: bool = True,
            words: list[str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        self.done.append(command)
        done = subprocess.run(words or self.words(command), cwd=ROOT, capture_output=True,
                              text=True, timeout=120, check=False, env=_clean_env())  # fmt: skip
        if check:
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        return done

    def popen(self, command: str, log: Path) -> subprocess.Popen[bytes]:
        self.done.append(command)
        with log.open("wb") as sink:
            return subprocess.Popen(self.words(command), cwd=ROOT, stdout=sink, stderr=sink,
                                    env=_clean_env())  # fmt: skip


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "VIRTUAL_ENV"} and not k.startswith("GRIDFLEX_")}  # fmt: skip
    return {**env, "COLUMNS": "200"}


@pytest.fixture
def scratch() -> Iterator[tuple[Path, str]]:
    """A world-traversable scratch root and a fresh system user name, removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("the guide creates a system user with sudo: run as root (CI does)")
    root = Path(tempfile.mkdtemp(prefix="gridflex-guide-"))
    root.chmod(0o755)
    user = f"gfx{uuid.uuid4().hex[:8]}"
    yield root, user
    subprocess.run(["userdel", user], capture_output=True, check=False)
    subprocess.run(["rm", "-rf", str(root)], check=False)


def test_the_install_guide_works_verbatim_as_a_non_root_service_user(
    venv: Path, scratch: tuple[Path, str], own_mqtt_broker: Broker
) -> None:
    root, user = scratch
    guide = Guide(root, user, venv / "gridflex")
    commands = guide_commands()
    step = iter(commands)

    # 1. the user; then, before the state directory exists, check-config must refuse
    useradd = next(step)
    assert useradd.startswith("sudo useradd --system")
    guide.path("/var/lib").mkdir(parents=True)
    guide.path("/var/lib").chmod(0o755)
    guide.run(useradd)
    service = pwd.getpwnam(user)
    assert service.pw_uid != 0
    state_dir_line, etc_line = next(step), next(step)
    guide.run(etc_line)

    # 3. the site file (the local trial's: simulated devices, replayed prices), edited
    site_line = next(step)
    guide.run(site_line, words=guide.words(site_line.replace("small-site", "local-trial")))
    site_file = guide.path("/etc/gridflex/site.yaml")
    assert site_file.stat().st_mode & 0o777 == 0o640
    assert site_file.stat().st_gid == service.pw_gid
    site = yaml.safe_load(site_file.read_text())
    page_port = free_port()
    site["prices"]["replay_path"] = str(_installed_prices(venv))
    # signed dispatch: the key comes from the env file, so check-config and run need it
    site["mqtt"].update(port=own_mqtt_broker.port, hmac_secret="${GRIDFLEX_DISPATCH_HMAC}")
    site["service"].update(database=str(guide.path("/var/lib/gridflex/gridflex.sqlite3")),
                           metrics_port=None, status_page_port=page_port)  # fmt: skip
    site_file.write_text(yaml.safe_dump(site))  # the engineer's edit keeps owner and mode

    # 4. the secrets, at 0600 root's, edited
    env_line = next(step)
    guide.run(env_line)
    env_file = guide.path("/etc/gridflex/gridflex.env")
    assert (env_file.stat().st_mode & 0o777, env_file.stat().st_uid) == (0o600, 0)
    env_file.write_text(env_file.read_text().replace("change-me-to-32-or-more-random-bytes", HMAC))

    # 5. check-config as the service user: the state directory is missing and its parent is
    # root's, so it is refused with the fix in one line; that line makes it pass
    check_line = next(step)
    refused = guide.run(check_line, check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr
    (problem,) = [line for line in refused.stderr.splitlines() if "service.database" in line]
    assert f"not writable by user {user}" in problem
    fix = re.search(r"as root: (.+)$", problem)
    assert fix is not None, problem
    assert fix[1] == shlex.join(guide.words(state_dir_line)), (fix[1], state_dir_line)
    guide.run(state_dir_line)  # the guide's own line is the fix
    state_dir = guide.path("/var/lib/gridflex")
    assert (state_dir.stat().st_uid, state_dir.stat().st_mode & 0o777) == (service.pw_uid, 0o750)
    checked = guide.run(check_line)
    assert "OK" in checked.stdout

    # the trial run, as the service user, until its status page shows a priced telemetry
    run_line = next(step)
    log = root / "run.log"
    process = guide.popen(run_line, log)
    try:
        view = wait_for_priced_page(page_port, process, log)
        assert view["telemetry"]["devices_total"] == 52
        status = guide.run(next(step))
        assert "gridflex/trial: online" in status.stdout
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
    database = guide.path("/var/lib/gridflex/gridflex.sqlite3")
    assert database.stat().st_uid == service.pw_uid  # written by the service user, not root
    events = guide.run(next(step))
    assert "Traceback" not in events.stderr
    audit = guide.run(next(step))
    assert "command" in audit.stdout
    assert sorted(guide.done) == sorted([*commands, check_line])  # each once, check-config twice


def _installed_prices(venv: Path) -> Path:
    found = subprocess.run([str(venv / "python"), "-c",
                            "import agent, pathlib; print(pathlib.Path(agent.__file__).parent)"],
                           capture_output=True, text=True, check=True, cwd="/")  # fmt: skip
    return Path(found.stdout.strip()) / "data/ercot_rt_spp_15min_hb_hubavg_2024.csv.gz"
