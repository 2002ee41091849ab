"""The command fan-out: send setpoints to many devices at once, bounded, each with a deadline.

A driver that proves its command by measured power returns that measurement; otherwise the
device is read once after the command (when it can be read). A device that fails or times out
is marked unavailable in the bank, so the next decide() plans around it.
"""

from __future__ import annotations

import asyncio

import numpy as np

from agent.domain.fleet import FloatArray
from agent.errors import DeviceError, DeviceTimeoutError, VerificationError
from agent.ports import Capability, DeviceCommand, DeviceDriver, DeviceReading, EndpointBatch
from agent.service.devices import EPS_KW, DeviceBank, why

__all__ = ["apply_setpoints"]


async def apply_setpoints(
    bank: DeviceBank, indices: np.ndarray, target: FloatArray
) -> dict[str, str]:
    """Apply `target` to the devices at `indices` concurrently: those sharing an endpoint in one
    batch (a PDU's outlets: a few requests for all of them), the others one by one. Returns
    {device id: why failed}."""
    reasons: dict[int, str] = {}

    async def one(i: int) -> None:
        reasons[i] = await _apply_one(bank, i, target)

    async def together(batch: EndpointBatch, members: list[int]) -> None:
        reasons.update(await _apply_batch(bank, batch, members, target))

    singles, batches = bank.by_endpoint(indices)
    async with bank.commanding():
        await asyncio.gather(*(one(i) for i in singles),
                             *(together(b, members) for b, members in batches))  # fmt: skip
    bank.flush_log()
    ids = bank.fleet.device_ids
    return {ids[i]: why for i, why in reasons.items() if why}


def _commands(bank: DeviceBank, idx: np.ndarray, target: FloatArray) -> list[DeviceCommand]:
    """The absolute commands for `idx`, recorded as sent (columns at once: a PDU's outlets)."""
    kw = target[idx].astype(np.float64)
    rated = bank.fleet.rated_kw[idx]
    percent = np.divide(100.0 * kw, rated, out=np.zeros_like(kw), where=rated > 0)
    bank.commanded_kw[idx] = kw
    bank.command_started_s[idx] = bank.monotonic_s()  # readings begun before it are stale
    bank.evidence.confirmed[idx] = False  # until a relay reads back in the commanded state
    ids = bank.fleet.device_ids
    rows = zip(idx.tolist(), kw.tolist(), percent.tolist(), strict=True)
    return [DeviceCommand(ids[i], k > EPS_KW, k, p) for i, k, p in rows]


async def _apply_batch(
    bank: DeviceBank, batch: EndpointBatch, members: list[int], target: FloatArray
) -> dict[int, str]:
    idx = np.asarray(members, dtype=np.intp)
    commands = _commands(bank, idx, target)
    timeout_s = bank.settings.verify_timeout_s
    reasons = dict.fromkeys(members, "")
    try:
        async with bank.semaphore, asyncio.timeout(timeout_s):
            results = await batch.apply_many(commands)
            unproven = [k for k, r in enumerate(results) if r is None]
            if unproven and bank.settings.read_after_apply:
                ids = [commands[k].device_id for k in unproven]
                again = await batch.read_many(ids, with_state=False)  # the read-back proved it
                for k, reading in zip(unproven, again, strict=True):
                    results[k] = reading
    except TimeoutError:
        for i in members:
            reason = str(DeviceTimeoutError(bank.fleet.device_ids[i],
                                            f"no verified apply within {timeout_s} s"))  # fmt: skip
            bank.mark_down(i, reason)
            reasons[i] = reason
        return reasons
    except Exception as exc:  # a driver bug fails these devices, never the fan-out of the site
        for i in members:
            bank.unexpected(i, exc)
            reasons[i] = f"unexpected {type(exc).__name__}: {why(exc)}"
        return reasons
    finally:
        bank.commanded_at_s[idx] = bank.monotonic_s()  # their settle windows start now
    ok = np.ones(len(members), dtype=np.bool_)
    for k, (i, result) in enumerate(zip(members, results, strict=True)):
        if isinstance(result, DeviceError):
            _failed(bank, i, result)
            reasons[i] = why(result)
            ok[k] = False
    bank.applied_kw[idx[ok]] = bank.commanded_kw[idx[ok]]
    bank.measured_kw[idx[ok]] = np.nan
    for i, result in zip(members, results, strict=True):
        if isinstance(result, DeviceReading) and result.power_kw is not None:
            bank.take_reading(i, result.power_kw)
    return reasons


async def _apply_one(bank: DeviceBank, i: int, target: FloatArray) -> str:
    driver = bank.drivers[i]
    assert driver is not None
    (command,) = _commands(bank, np.array([i], dtype=np.intp), target)
    kw, device_id = command.kw, command.device_id
    timeout_s = bank.settings.verify_timeout_s
    try:
        async with bank.semaphore, asyncio.timeout(timeout_s):
            # A driver that proved the command by measured power returns that measurement:
            # reading the device again would cost a second round trip for nothing.
            reading = await driver.apply(command)
            bank.applied_kw[i] = kw
            bank.measured_kw[i] = np.nan
            if (reading is None or reading.power_kw is None) and _reads_after(bank, driver):
                reading = await driver.read()
            if reading is not None and reading.power_kw is not None:
                bank.take_reading(i, reading.power_kw)
    except TimeoutError:
        reason = str(DeviceTimeoutError(device_id, f"no verified apply within {timeout_s} s"))
        bank.mark_down(i, reason)
        return reason
    except DeviceError as exc:
        _failed(bank, i, exc)
        return why(exc)
    except Exception as exc:  # a driver bug fails this device, never the fan-out of the site
        bank.unexpected(i, exc)
        return f"unexpected {type(exc).__name__}: {why(exc)}"
    finally:
        bank.commanded_at_s[i] = bank.monotonic_s()  # its settle window starts now
    return ""


def _failed(bank: DeviceBank, i: int, exc: DeviceError) -> None:
    """A device that answered and did not do as told (its read-back says otherwise) is not
    obeying: reachable, planned around at its worst case, re-sent on a backoff. One that did
    not answer is unavailable."""
    if isinstance(exc, VerificationError):
        bank.applied_kw[i] = np.nan
        bank.disobeys(i, why(exc))
    else:
        bank.mark_down(i, why(exc))


def _reads_after(bank: DeviceBank, driver: DeviceDriver) -> bool:
    return bank.settings.read_after_apply and Capability.POWER_READING in driver.capabilities
