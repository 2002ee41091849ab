"""The base of the site file's models: unknown keys refused, values frozen, each field's
docstring its description (agent.config.reference writes docs/configure.md from them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Strict"]


class Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, use_attribute_docstrings=True
    )
