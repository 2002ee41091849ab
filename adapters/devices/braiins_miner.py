"""An ASIC miner running Braiins OS+, through the Braiins OS+ Public API (gRPC on TCP 50051).

What the API offers for curtailment, and what this driver sends (names from the API's proto
files, github.com/braiins/bos-plus-api):
- `AuthenticationService/Login(username, password)`: the token comes back in the `authorization`
  response header and every other call carries it in the `authorization` request header. A call
  refused as UNAUTHENTICATED (token expired, miner rebooted) logs in again once and retries;
- `ActionsService/PauseMining` to stop hashing and `ResumeMining` to start again: both
  idempotent (`already_paused`, `already_mining`), neither restarts bosminer;
- `PerformanceService/SetPowerTarget(SAVE_ACTION_SAVE_AND_APPLY, power_target.watt)` for a
  power limit: the tuner moves to it without a restart, and the target is saved, so a miner
  that reboots mid-event comes back capped, not at full power (the next "on" at full rating
  sets it back);
- `MinerService/GetMinerStats`: `power_stats.approximated_consumption.watt` is the firmware's
  estimate of the miner's draw (Braiins calls it approximated: it is computed from the tuner's
  model, not metered). The shell verifies commands against it; where a metered PDU outlet feeds
  the miner, that outlet is the better witness.

The generated stubs (`*_pb2_grpc.py`) are not used: each call is a plain `unary_unary` on the
channel with the message classes of bos_api.proto, so the runtime needs only `grpcio` (the
`gridflex[braiins]` extra), in any version that the protobuf runtime supports. pyasic-rs was
not used for the reasons in adapters/devices/miners.py.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc import aio

from adapters.devices.braiins import bos_api_pb2 as api
from adapters.devices.miners import MinerBase
from agent.errors import DeviceRejectedError, DeviceTimeoutError, DeviceUnavailableError
from agent.ports import DeviceCommand, DeviceReading

__all__ = ["BraiinsMiner"]

_PACKAGE = "/braiins.bos.v1."
_RETRY_AUTH = frozenset({grpc.StatusCode.UNAUTHENTICATED})
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


class BraiinsMiner(MinerBase):
    """A DeviceDriver for one Braiins OS+ miner (see the module doc)."""

    _channel: aio.Channel | None = None
    _token: str | None = None

    async def apply(self, command: DeviceCommand) -> None:
        if not command.on:
            await self._call("ActionsService/PauseMining", api.PauseMiningRequest(),
                             api.PauseMiningResponse)  # fmt: skip
            return
        if command.kw > 0:
            request = api.SetPowerTargetRequest(
                save_action=api.SAVE_ACTION_SAVE_AND_APPLY,
                power_target=api.Power(watt=round(command.kw * 1000)),
            )
            await self._call("PerformanceService/SetPowerTarget", request,
                             api.SetPowerTargetResponse)  # fmt: skip
        await self._call("ActionsService/ResumeMining", api.ResumeMiningRequest(),
                         api.ResumeMiningResponse)  # fmt: skip

    async def read(self) -> DeviceReading:
        stats = await self._call("MinerService/GetMinerStats", api.GetMinerStatsRequest(),
                                 api.GetMinerStatsResponse)  # fmt: skip
        if not stats.HasField("power_stats"):
            raise DeviceRejectedError(self._device_id, "GetMinerStats: no power_stats")
        watts = stats.power_stats.approximated_consumption.watt
        return DeviceReading(self._device_id, self._clock(), power_kw=watts / 1000.0,
                             running=watts > 0)  # fmt: skip

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    # -- the wire ------------------------------------------------------------------------
    async def _call(self, method: str, request: Any, response_type: Any) -> Any:
        if self._token is None:
            await self._login()
        try:
            return await self._unary(method, request, response_type)
        except aio.AioRpcError as exc:
            if exc.code() not in _RETRY_AUTH:
                raise self._translate(method, exc) from exc
        await self._login()  # the token expired or the miner restarted: once more
        try:
            return await self._unary(method, request, response_type)
        except aio.AioRpcError as exc:
            raise self._translate(method, exc) from exc

    async def _login(self) -> None:
        config = self._config
        password = config.password.get_secret_value() if config.password else ""
        request = api.LoginRequest(username=config.username, password=password)
        call = self._rpc("AuthenticationService/Login", api.LoginResponse)(
            request, timeout=config.timeout_s
        )
        try:
            await call
            headers = dict(await call.initial_metadata() or ())
        except aio.AioRpcError as exc:
            raise self._translate("AuthenticationService/Login", exc) from exc
        token = headers.get("authorization")
        if not token:
            raise DeviceRejectedError(self._device_id, "Login: no authorization token returned")
        self._token = str(token)

    async def _unary(self, method: str, request: Any, response_type: Any) -> Any:
        metadata = (("authorization", self._token or ""),)
        return await self._rpc(method, response_type)(
            request, timeout=self._config.timeout_s, metadata=metadata
        )

    def _rpc(self, method: str, response_type: Any) -> Any:
        if self._channel is None:
            self._channel = aio.insecure_channel(f"{self._config.host}:{self._config.api_port}")
        return self._channel.unary_unary(
            _PACKAGE + method,
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=response_type.FromString,
        )

    def _translate(self, method: str, exc: aio.AioRpcError) -> Exception:
        where = f"{method}: {exc.code().name} {exc.details() or ''}".strip()
        if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeviceTimeoutError(self._device_id, where)
        if exc.code() in _UNREACHABLE:
            self._token = None
            return DeviceUnavailableError(self._device_id, where)
        if exc.code() in _RETRY_AUTH:
            self._token = None
        return DeviceRejectedError(self._device_id, where)
