"""A fake Braiins OS+ miner serving the Public API over real gRPC on loopback, written from the
API's published definitions (github.com/braiins/bos-plus-api: proto/bos/v1/*.proto and the
README's authentication section), not from gridflex's driver: its own message classes, built
in a private descriptor pool with the API's field numbers, and more fields than the driver
reads (a client must skip what it does not know).

Behaviour, as the API and a real miner have it:
- Login(username, password) answers the token in the `authorization` response header; every
  other method wants it in the `authorization` request header, else UNAUTHENTICATED. A reboot
  forgets every token.
- PauseMining / ResumeMining are idempotent (`already_paused`, `already_mining`).
- SetPowerTarget with SAVE_AND_APPLY moves the tuner to the target and saves it: it survives a
  reboot. SAVE alone saves without applying.
- The reported `approximated_consumption` moves over `ramp_s` to its new value after any
  change (hashboards stopping, the tuner converging), and a paused miner still draws its
  control board and fans (`idle_w`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc import aio

__all__ = ["FakeBraiinsMiner"]

_F = descriptor_pb2.FieldDescriptorProto
_MSG, _BOOL, _STR, _U64, _DBL, _ENUM = (_F.TYPE_MESSAGE, _F.TYPE_BOOL, _F.TYPE_STRING,
                                        _F.TYPE_UINT64, _F.TYPE_DOUBLE, _F.TYPE_ENUM)  # fmt: skip
# message: [(field, number, type, type name)] as the API's proto files define them
_MESSAGES: dict[str, list[tuple[str, int, int, str]]] = {
    "LoginRequest": [("username", 1, _STR, ""), ("password", 2, _STR, "")],
    "LoginResponse": [],
    "PauseMiningRequest": [],
    "PauseMiningResponse": [("already_paused", 1, _BOOL, "")],
    "ResumeMiningRequest": [],
    "ResumeMiningResponse": [("already_mining", 1, _BOOL, "")],
    "Power": [("watt", 1, _U64, "")],
    "PowerEfficiency": [("joule_per_terahash", 1, _DBL, "")],
    "SetPowerTargetRequest": [("save_action", 1, _ENUM, ".fake.SaveAction"),
                              ("power_target", 2, _MSG, ".fake.Power")],
    "SetPowerTargetResponse": [("power_target", 1, _MSG, ".fake.Power")],
    "MinerPowerStats": [("approximated_consumption", 1, _MSG, ".fake.Power"),
                        ("efficiency", 2, _MSG, ".fake.PowerEfficiency")],
    "GetMinerStatsRequest": [],
    "GetMinerStatsResponse": [("power_stats", 3, _MSG, ".fake.MinerPowerStats")],
}  # fmt: skip
SAVE, SAVE_AND_APPLY, SAVE_AND_FORCE_APPLY = 1, 2, 3  # SaveAction values


def _classes() -> dict[str, Any]:
    file = descriptor_pb2.FileDescriptorProto(name="fake_bos.proto", package="fake",
                                              syntax="proto3")  # fmt: skip
    save = file.enum_type.add(name="SaveAction")
    for name, number in (("SAVE_ACTION_UNSPECIFIED", 0), ("SAVE_ACTION_SAVE", 1),
                         ("SAVE_ACTION_SAVE_AND_APPLY", 2),
                         ("SAVE_ACTION_SAVE_AND_FORCE_APPLY", 3)):  # fmt: skip
        save.value.add(name=name, number=number)
    for message, fields in _MESSAGES.items():
        added = file.message_type.add(name=message)
        for name, number, kind, type_name in fields:
            added.field.add(name=name, number=number, type=kind, type_name=type_name or None,
                            label=_F.LABEL_OPTIONAL)  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {m: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"fake.{m}"))
            for m in _MESSAGES}  # fmt: skip


M = _classes()


@dataclass
class FakeBraiinsMiner:
    port: int
    host: str = "127.0.0.1"
    username: str = "root"
    password: str = "s3cret"
    rated_w: float = 3250.0
    idle_w: float = 40.0
    ramp_s: float = 0.4
    answer_delay_s: float = 0.0  # a miner too busy to answer in time
    paused: bool = False
    target_w: float = 3250.0  # the tuner's target in force
    saved_target_w: float = 3250.0  # what a reboot comes back with
    logins: int = 0
    calls: list[str] = field(default_factory=list)
    _tokens: set[str] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _moved: tuple[float, float] | None = None  # (monotonic time, watts when it changed)
    _server: aio.Server | None = None

    # -- the physics ------------------------------------------------------------------------
    def power_w(self) -> float:
        target = self.idle_w if self.paused else min(self.rated_w, self.target_w)
        if self._moved is None:
            return target
        since_s = time.monotonic() - self._moved[0]
        if since_s >= self.ramp_s:
            return target
        return self._moved[1] + (target - self._moved[1]) * since_s / self.ramp_s

    def _change(self) -> None:
        self._moved = (time.monotonic(), self.power_w())

    def reboot(self) -> None:
        """A power cycle: tokens forgotten, mining again, at the saved power target."""
        self._change()
        self._tokens.clear()
        self.paused = False
        self.target_w = self.saved_target_w

    def expire_tokens(self) -> None:
        self._tokens.clear()

    # -- the API ----------------------------------------------------------------------------
    async def _authorised(self, context: aio.ServicerContext[Any, Any]) -> None:
        if self.answer_delay_s:
            await asyncio.sleep(self.answer_delay_s)
        token = dict(context.invocation_metadata() or ()).get("authorization")
        if token not in self._tokens:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid or missing token")

    async def login(self, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        self.calls.append("Login")
        if (request.username, request.password) != (self.username, self.password):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong username or password")
        self.logins += 1
        token = f"tok{next(self._ids)}"
        self._tokens.add(token)
        await context.send_initial_metadata((("authorization", token),))
        return M["LoginResponse"]()

    async def pause(self, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await self._authorised(context)
        self.calls.append("PauseMining")
        already = self.paused
        if not already:
            self._change()
            self.paused = True
        return M["PauseMiningResponse"](already_paused=already)

    async def resume(self, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await self._authorised(context)
        self.calls.append("ResumeMining")
        already = not self.paused
        if not already:
            self._change()
            self.paused = False
        return M["ResumeMiningResponse"](already_mining=already)

    async def set_power_target(self, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await self._authorised(context)
        self.calls.append(f"SetPowerTarget {request.power_target.watt} {request.save_action}")
        watts = float(request.power_target.watt)
        if not 0 < watts <= self.rated_w * 1.2:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"power target {watts} W")
        if request.save_action in (SAVE, SAVE_AND_APPLY, SAVE_AND_FORCE_APPLY):
            self.saved_target_w = watts
        if request.save_action in (SAVE_AND_APPLY, SAVE_AND_FORCE_APPLY):
            self._change()
            self.target_w = watts
        power = M["Power"](watt=round(self.target_w))
        return M["SetPowerTargetResponse"](power_target=power)

    async def stats(self, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await self._authorised(context)
        power = M["Power"](watt=round(self.power_w()))
        efficiency = M["PowerEfficiency"](joule_per_terahash=29.5)
        stats = M["MinerPowerStats"](approximated_consumption=power, efficiency=efficiency)
        return M["GetMinerStatsResponse"](power_stats=stats)

    async def start(self) -> None:
        def unary(handler: Any, request: str, response: str) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                handler,
                request_deserializer=M[request].FromString,
                response_serializer=lambda message: message.SerializeToString(),
            )

        services = {
            "AuthenticationService": {"Login": unary(self.login, "LoginRequest", "LoginResponse")},
            "ActionsService": {
                "PauseMining": unary(self.pause, "PauseMiningRequest", "PauseMiningResponse"),
                "ResumeMining": unary(self.resume, "ResumeMiningRequest", "ResumeMiningResponse"),
            },
            "PerformanceService": {"SetPowerTarget": unary(
                self.set_power_target, "SetPowerTargetRequest", "SetPowerTargetResponse")},
            "MinerService": {"GetMinerStats": unary(self.stats, "GetMinerStatsRequest",
                                                    "GetMinerStatsResponse")},
        }  # fmt: skip
        server = aio.server()
        server.add_generic_rpc_handlers(tuple(
            grpc.method_handlers_generic_handler(f"braiins.bos.v1.{name}", methods)
            for name, methods in services.items()
        ))  # fmt: skip
        server.add_insecure_port(f"{self.host}:{self.port}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    async def __aenter__(self) -> FakeBraiinsMiner:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()
