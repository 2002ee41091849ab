"""One Modbus TCP connection per endpoint, shared by every device behind it.

pymodbus serializes the requests of one client (one transaction at a time per connection), and
many field gateways accept only a handful of TCP sessions. So the pool keeps exactly one
`AsyncModbusTcpClient` per (host, port), multiplexes unit ids over it, keeps it across cycles,
and reconnects lazily. Every request has a deadline; transient faults (timeouts, resets, a busy
device) are retried with tenacity; everything else is translated once, here, into
agent.errors.DeviceError subclasses.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from agent.errors import (
    DeviceRejectedError,
    DeviceTimeoutError,
    DeviceUnavailableError,
)

__all__ = ["ModbusPool", "ModbusTarget", "PoolSettings", "TableName"]

TableName = Literal["coil", "discrete", "holding", "input"]

# Modbus exception codes worth another try: 5 ACKNOWLEDGE, 6 SERVER DEVICE BUSY,
# 0x0A/0x0B gateway path unavailable / target failed to respond (Modbus Application Protocol
# v1.1b3, section 7). Anything else (illegal function/address/value, device failure) is final.
_TRANSIENT_EXCEPTION_CODES = frozenset({5, 6, 0x0A, 0x0B})


class _TransientRejectionError(DeviceRejectedError):
    """A Modbus exception response that says "try again"."""


_TRANSIENT = (DeviceTimeoutError, DeviceUnavailableError, _TransientRejectionError)


@dataclass(frozen=True, slots=True)
class ModbusTarget:
    """Where one device lives: its endpoint, its unit id, and the deadline of each request."""

    device_id: str
    host: str
    port: int
    unit_id: int
    timeout_s: float


@dataclass(frozen=True, slots=True)
class _Request:
    write: bool
    table: TableName
    address: int
    count: int
    values: tuple[int, ...] = ()

    def describe(self, unit_id: int) -> str:
        verb = "write" if self.write else "read"
        return f"{verb} {self.table}@{self.address} unit {unit_id}"


@dataclass(frozen=True, slots=True)
class PoolSettings:
    max_in_flight: int = 512
    attempts: int = 3
    retry_wait_s: float = 0.05
    retry_wait_max_s: float = 0.5


@dataclass
class _Endpoint:
    client: AsyncModbusTcpClient
    # pymodbus has its own per-client lock; ours also covers (re)connecting
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ModbusPool:
    """Shared Modbus TCP connections. Use one pool per event loop; `close()` at shutdown."""

    def __init__(self, settings: PoolSettings | None = None) -> None:
        self._settings = settings or PoolSettings()
        self._endpoints: dict[tuple[str, int], _Endpoint] = {}
        self._in_flight = asyncio.Semaphore(self._settings.max_in_flight)

    @property
    def endpoint_count(self) -> int:
        return len(self._endpoints)

    async def read(
        self, target: ModbusTarget, table: TableName, address: int, count: int
    ) -> list[int]:
        """Words (registers) or bits (coils, discrete inputs, as 0/1) at `address`."""
        return await self._with_retries(target, _Request(False, table, address, count))

    async def write(
        self, target: ModbusTarget, table: TableName, address: int, values: list[int]
    ) -> None:
        request = _Request(True, table, address, len(values), tuple(values))
        await self._with_retries(target, request)

    async def close(self) -> None:
        for endpoint in self._endpoints.values():
            endpoint.client.close()
        self._endpoints.clear()

    async def _with_retries(self, target: ModbusTarget, request: _Request) -> list[int]:
        # The first try runs bare: tenacity's bookkeeping costs more than a loopback round trip,
        # and almost every request succeeds first time. Only a transient fault enters the loop.
        try:
            return await self._once(target, request)
        except _TRANSIENT:
            if self._settings.attempts <= 1:
                raise
        settings = self._settings
        await asyncio.sleep(settings.retry_wait_s)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(settings.attempts - 1),
            wait=wait_exponential(multiplier=settings.retry_wait_s, max=settings.retry_wait_max_s),
            retry=retry_if_exception_type(_TRANSIENT),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._once(target, request)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _once(self, target: ModbusTarget, request: _Request) -> list[int]:
        endpoint = self._endpoint(target)
        where = f"{target.host}:{target.port}"
        async with endpoint.lock, self._in_flight:
            try:
                if not endpoint.client.connected:
                    await self._connect(endpoint, target)
                # the request's deadline is the client's own `timeout` (set from timeout_s): it
                # raises ModbusIOException, translated below
                return await _execute(endpoint.client, request, target)
            except ModbusIOException as exc:
                # a late answer must not be read as the reply to the next request: start afresh
                endpoint.client.close()
                raise DeviceTimeoutError(
                    target.device_id, f"no answer from {where} within {target.timeout_s} s: {exc}"
                ) from exc
            except (ConnectionException, OSError) as exc:
                endpoint.client.close()
                raise DeviceUnavailableError(target.device_id, f"{where}: {exc}") from exc
            except ModbusException as exc:
                raise DeviceRejectedError(target.device_id, f"{where}: {exc}") from exc

    @staticmethod
    async def _connect(endpoint: _Endpoint, target: ModbusTarget) -> None:
        where = f"{target.host}:{target.port}"
        try:
            async with asyncio.timeout(target.timeout_s):
                connected = await endpoint.client.connect()
        except TimeoutError as exc:
            endpoint.client.close()
            raise DeviceTimeoutError(
                target.device_id, f"no connection to {where} within {target.timeout_s} s"
            ) from exc
        if not connected:
            raise DeviceUnavailableError(target.device_id, f"cannot connect to {where}")

    def _endpoint(self, target: ModbusTarget) -> _Endpoint:
        key = (target.host, target.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            # reconnect_delay=0: no background reconnect loop; we reconnect on the next request
            client = AsyncModbusTcpClient(
                target.host,
                port=target.port,
                timeout=target.timeout_s,
                retries=0,
                reconnect_delay=0,
            )
            endpoint = _Endpoint(client=client)
            self._endpoints[key] = endpoint
        return endpoint


async def _execute(
    client: AsyncModbusTcpClient, request: _Request, target: ModbusTarget
) -> list[int]:
    if request.write:
        response = await _write_call(client, request, target)
    else:
        response = await _read_call(client, request, target.unit_id)
    if response.isError():
        code = int(getattr(response, "exception_code", 0))
        error_type = (
            _TransientRejectionError if code in _TRANSIENT_EXCEPTION_CODES else DeviceRejectedError
        )
        raise error_type(
            target.device_id, f"Modbus exception {code} for {request.describe(target.unit_id)}"
        )
    if request.write:
        return []
    if request.table in ("coil", "discrete"):
        values = [1 if bit else 0 for bit in response.bits[: request.count]]
    else:
        values = list(response.registers)
    if len(values) != request.count:
        # a reply shorter than asked would fail (or, worse, decode wrong) further in: it is the
        # device's fault, said here in our terms
        raise DeviceRejectedError(
            target.device_id,
            f"short reply: {len(values)} of {request.count} for {request.describe(target.unit_id)}",
        )
    return values


async def _read_call(client: AsyncModbusTcpClient, request: _Request, unit_id: int) -> Any:
    readers = {
        "coil": client.read_coils,
        "discrete": client.read_discrete_inputs,
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
    }
    return await readers[request.table](request.address, count=request.count, device_id=unit_id)


async def _write_call(client: AsyncModbusTcpClient, request: _Request, target: ModbusTarget) -> Any:
    values, unit_id = request.values, target.unit_id
    if request.table == "coil":
        if len(values) == 1:
            return await client.write_coil(request.address, bool(values[0]), device_id=unit_id)
        return await client.write_coils(
            request.address, [bool(v) for v in values], device_id=unit_id
        )
    if request.table == "holding":
        if len(values) == 1:
            return await client.write_register(request.address, values[0], device_id=unit_id)
        return await client.write_registers(request.address, list(values), device_id=unit_id)
    raise DeviceRejectedError(target.device_id, f"table {request.table} is read-only")
