from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SaveAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAVE_ACTION_UNSPECIFIED: _ClassVar[SaveAction]
    SAVE_ACTION_SAVE: _ClassVar[SaveAction]
    SAVE_ACTION_SAVE_AND_APPLY: _ClassVar[SaveAction]
    SAVE_ACTION_SAVE_AND_FORCE_APPLY: _ClassVar[SaveAction]
SAVE_ACTION_UNSPECIFIED: SaveAction
SAVE_ACTION_SAVE: SaveAction
SAVE_ACTION_SAVE_AND_APPLY: SaveAction
SAVE_ACTION_SAVE_AND_FORCE_APPLY: SaveAction

class LoginRequest(_message.Message):
    __slots__ = ("username", "password")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class LoginResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PauseMiningRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PauseMiningResponse(_message.Message):
    __slots__ = ("already_paused",)
    ALREADY_PAUSED_FIELD_NUMBER: _ClassVar[int]
    already_paused: bool
    def __init__(self, already_paused: _Optional[bool] = ...) -> None: ...

class ResumeMiningRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ResumeMiningResponse(_message.Message):
    __slots__ = ("already_mining",)
    ALREADY_MINING_FIELD_NUMBER: _ClassVar[int]
    already_mining: bool
    def __init__(self, already_mining: _Optional[bool] = ...) -> None: ...

class Power(_message.Message):
    __slots__ = ("watt",)
    WATT_FIELD_NUMBER: _ClassVar[int]
    watt: int
    def __init__(self, watt: _Optional[int] = ...) -> None: ...

class SetPowerTargetRequest(_message.Message):
    __slots__ = ("save_action", "power_target")
    SAVE_ACTION_FIELD_NUMBER: _ClassVar[int]
    POWER_TARGET_FIELD_NUMBER: _ClassVar[int]
    save_action: SaveAction
    power_target: Power
    def __init__(self, save_action: _Optional[_Union[SaveAction, str]] = ..., power_target: _Optional[_Union[Power, _Mapping]] = ...) -> None: ...

class SetPowerTargetResponse(_message.Message):
    __slots__ = ("power_target",)
    POWER_TARGET_FIELD_NUMBER: _ClassVar[int]
    power_target: Power
    def __init__(self, power_target: _Optional[_Union[Power, _Mapping]] = ...) -> None: ...

class MinerPowerStats(_message.Message):
    __slots__ = ("approximated_consumption",)
    APPROXIMATED_CONSUMPTION_FIELD_NUMBER: _ClassVar[int]
    approximated_consumption: Power
    def __init__(self, approximated_consumption: _Optional[_Union[Power, _Mapping]] = ...) -> None: ...

class GetMinerStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetMinerStatsResponse(_message.Message):
    __slots__ = ("power_stats",)
    POWER_STATS_FIELD_NUMBER: _ClassVar[int]
    power_stats: MinerPowerStats
    def __init__(self, power_stats: _Optional[_Union[MinerPowerStats, _Mapping]] = ...) -> None: ...
