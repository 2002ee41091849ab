"""The project's own error hierarchy. Adapters translate library errors into these at their edge."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeviceError",
    "DeviceRejectedError",
    "DeviceTimeoutError",
    "DeviceUnavailableError",
    "GridflexError",
    "SignalAuthError",
    "SignalError",
    "SignalFormatError",
    "SignalUnavailableError",
    "VerificationError",
]


class GridflexError(Exception):
    """Base of every error gridflex raises on purpose."""


class ConfigError(GridflexError):
    """The site configuration is invalid; the message lists every problem."""


class DeviceError(GridflexError):
    """A device could not be read or commanded."""

    def __init__(self, device_id: str, message: str) -> None:
        super().__init__(f"{device_id}: {message}")
        self.device_id = device_id


class DeviceUnavailableError(DeviceError):
    """The device (or its endpoint) cannot be reached: refused, reset, unknown host."""


class DeviceTimeoutError(DeviceError):
    """The device did not answer in time."""


class DeviceRejectedError(DeviceError):
    """The device answered but refused: a Modbus exception, an NVML refusal, a firmware error."""


class VerificationError(DeviceError):
    """The device acknowledged a command but its measured state does not show it."""


class SignalError(GridflexError):
    """A signal source (prices, dispatch, OpenADR) failed."""


class SignalUnavailableError(SignalError):
    """The source cannot be reached or keeps failing after retries."""


class SignalAuthError(SignalError):
    """The source refused our credentials."""


class SignalFormatError(SignalError):
    """The source answered with something that is not in its documented format."""
