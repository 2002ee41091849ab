"""Terms the shell's device code shares: its settings, and how devices and failures are named
in logs and the audit."""

from __future__ import annotations

from dataclasses import dataclass

from agent.domain.fleet import Fleet
from agent.errors import DeviceError

__all__ = ["ShellSettings", "id_ranges", "why"]


def why(exc: BaseException) -> str:
    """An error as a reason a person can read, without the device id (the log and the audit
    name the device): never empty (str(TimeoutError()) is '')."""
    text = str(exc)
    if isinstance(exc, DeviceError):
        text = text.removeprefix(f"{exc.device_id}: ")
    return text if text else type(exc).__name__


def id_ranges(fleet: Fleet, indices: list[int]) -> str:
    """Device ids as runs of consecutive devices: 'pdu-0001..pdu-0024, tank-0002'."""
    ordered = sorted(set(indices))
    runs: list[tuple[int, int]] = []
    for i in ordered:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    ids = fleet.device_ids
    return ", ".join(ids[a] if a == b else f"{ids[a]}..{ids[b]}" for a, b in runs)


@dataclass(frozen=True, slots=True)
class ShellSettings:
    max_concurrency: int = 512
    verify_timeout_s: float = 10.0
    restore_batch_size: int = 50
    restore_batch_interval_s: float = 5.0
    # read measured power after a command whose driver did not return the measurement proving it
    read_after_apply: bool = True
    # shadow mode: decide and record what would be commanded, command nothing (agent.app.shadow)
    shadow: bool = False
