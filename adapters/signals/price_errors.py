"""Price-source errors beyond agent.errors: what a site engineer can act on differently."""

from __future__ import annotations

from agent.errors import SignalAuthError, SignalError

__all__ = ["MissingCredentialsError", "NoPriceDataError", "UnknownSettlementPointError"]


class MissingCredentialsError(SignalAuthError):
    """The credentials the source needs are not in the environment."""


class NoPriceDataError(SignalError):
    """The source answered, but holds no price for the requested days."""


class UnknownSettlementPointError(NoPriceDataError):
    """The source has prices for those days, but none for this settlement point name."""
