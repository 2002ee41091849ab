"""The `openadr3` section of the site file: the agent as an OpenADR 3.0 VEN (REST and OAuth 2)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from agent.config.openadr import MIN_POLL_S, OpenAdrLevelConfig
from agent.domain.settings import Posture

__all__ = ["OpenAdr3Config"]


class OpenAdr3Config(BaseModel):
    """A VEN of one or more OpenADR 3.0 programs (docs/openadr.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    vtn_url: str = Field(min_length=1, pattern=r"^https?://")
    """the VTN's base URL, e.g. https://vtn.example/openadr3/3.0.1"""
    token_url: str | None = Field(default=None, pattern=r"^https?://")
    """the OAuth 2 token endpoint; null: the VTN's /auth/token"""
    client_id: str = Field(min_length=1, max_length=4096)
    """the OAuth 2 client id the program operator issued to this VEN"""
    client_secret: SecretStr
    """its secret: write ${GRIDFLEX_OPENADR3_SECRET}"""
    scope: str | None = None
    """the OAuth 2 scope to ask for, when the VTN wants one"""
    ven_name: str = Field(min_length=1, max_length=128)
    """the VEN_NAME the program targets this site by"""
    programs: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(min_length=1)
    """the programName of every program the site is enrolled in"""
    resource_names: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list
    )
    """the RESOURCE_NAMEs a program may target this site's resources by; empty: the VEN name"""
    poll_interval_s: float = Field(default=10, ge=MIN_POLL_S, le=86_400)
    """how often the VTN is asked for events"""
    simple_levels: dict[Annotated[int, Field(ge=0, le=3)], OpenAdrLevelConfig] = Field(
        default_factory=lambda: {0: OpenAdrLevelConfig(posture=Posture.NONE)}
    )
    """what each SIMPLE level 0-3 asks of the site"""
    callback_url: str | None = Field(default=None, pattern=r"^https?://")
    """where the VTN can reach this VEN's webhook: with it set, the VEN subscribes to its
    programs' event changes and polls at once when called back; null: polling only"""
    callback_listen_host: str = "127.0.0.1"
    """the address the webhook listens on (loopback behind a TLS reverse proxy, as a site's
    status page is served; or the interface the VTN reaches)"""
    callback_listen_port: int = Field(default=8089, ge=1, le=65535)
    """the port the webhook listens on (the callback URL's port as the VTN sees it may differ)"""
    allow_plain_http: bool = False
    """accept an http:// VTN or callback URL (test rigs only)"""

    @model_validator(mode="after")
    def _transport(self) -> OpenAdr3Config:
        urls = [self.vtn_url, self.token_url or "", self.callback_url or ""]
        if any(u.startswith("http://") for u in urls) and not self.allow_plain_http:
            raise ValueError(
                "plain HTTP sends the OAuth secret and dispatch in clear: use https://, or set "
                "allow_plain_http: true (test rigs only)"
            )
        return self
