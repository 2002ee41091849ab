"""The `openadr` section of the site file: the agent as an OpenADR 2.0b VEN."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from agent.domain.settings import Posture

__all__ = ["OpenAdrConfig", "OpenAdrLevelConfig", "OpenAdrSetpointConfig"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class OpenAdrLevelConfig(_Strict):
    """What one SIMPLE level (0 normal, 1 moderate, 2 high, 3 special) asks of the site:
    exactly one of a posture, a site ceiling or an amount to shed."""

    posture: Posture | None = None
    ceiling_kw: float | None = Field(default=None, ge=0)
    shed_kw: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> OpenAdrLevelConfig:
        given = [v for v in (self.posture, self.ceiling_kw, self.shed_kw) if v is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of posture, ceiling_kw, shed_kw")
        # A VEN sees the site through SiteView, whose floors are "all sheddable load off"
        # (curtail_flexible) and "protected load off too" (curtail_protected); interruptible
        # alone has no site-wide floor, so it would have to be guessed. Say so at load time.
        if self.posture is Posture.CURTAIL_INTERRUPTIBLE:
            raise ValueError(
                "posture curtail_interruptible has no site-wide ceiling: use none, "
                "curtail_flexible, curtail_protected, or give ceiling_kw / shed_kw"
            )
        return self


class OpenAdrSetpointConfig(_Strict):
    """How a LOAD_DISPATCH / LOAD_CONTROL value is read: the site's ceiling, or kW to shed."""

    meaning: Literal["ceiling", "shed"]
    unit: Literal["W", "kW", "MW"] = Field(
        default="kW", description="when the signal carries no itemBase of its own"
    )


class OpenAdrConfig(_Strict):
    vtn_url: str = Field(min_length=1, pattern=r"^https?://")
    ven_name: str = Field(min_length=1, max_length=128)
    ven_id: str | None = Field(default=None, description="default: the id the VTN assigns")
    cert_file: Path | None = None
    key_file: Path | None = None
    key_passphrase: SecretStr | None = None
    ca_file: Path | None = None
    vtn_fingerprint: str | None = Field(
        default=None, pattern=r"^([0-9A-Fa-f]{2}:){9}[0-9A-Fa-f]{2}$"
    )
    allow_plain_http: bool = False
    poll_interval_s: float | None = Field(
        default=None, gt=0, le=86_400, description="default: the oadrPollFreq the VTN asks for"
    )
    simple_levels: dict[Annotated[int, Field(ge=0, le=3)], OpenAdrLevelConfig] = Field(
        default_factory=lambda: {0: OpenAdrLevelConfig(posture=Posture.NONE)}
    )
    load_dispatch: OpenAdrSetpointConfig | None = None
    load_control: OpenAdrSetpointConfig | None = None
    opt_out_when_infeasible: bool = True
    report_resource_id: str = Field(default="site", min_length=1)

    @model_validator(mode="after")
    def _transport(self) -> OpenAdrConfig:
        if self.vtn_url.startswith("http://"):
            if not self.allow_plain_http:
                raise ValueError(
                    "plain HTTP sends dispatch unauthenticated: use https://, or set "
                    "allow_plain_http: true (test rigs only)"
                )
            return self
        missing = [n for n in ("cert_file", "key_file", "ca_file") if getattr(self, n) is None]
        if missing:
            raise ValueError(f"an https VTN needs {', '.join(missing)} (OpenADR 2.0b mutual TLS)")
        return self
