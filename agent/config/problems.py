"""Where a problem in a site file is, said for the person who has to fix it: file:line, the field
path as written (`devices[3].rated_kw`), the value (hidden for secrets) and why."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from agent.errors import ConfigError

__all__ = [
    "ConfigFileError",
    "ConfigIssue",
    "data_loc",
    "format_path",
    "line_of",
    "shown_value",
    "substitute_env",
]


class ConfigIssue(BaseModel):
    """One problem in a site file, located for the person who has to fix it."""

    model_config = ConfigDict(frozen=True)

    file: str
    path: str
    line: int | None
    value: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        shown = f" (got {self.value})" if self.value else ""
        return f"{where}: {self.path or '<top>'}: {self.message}{shown}"


_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_WORDS = ("password", "secret", "token", "key")


def format_path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def substitute_env(
    node: Any,
    loc: tuple[int | str, ...],
    env: Mapping[str, str],
    missing: list[tuple[Any, ...]],
    filled: set[tuple[int | str, ...]] | None = None,
) -> Any:
    """Replace `${NAME}` from `env`; names not set go to `missing`, and the places filled from
    the environment to `filled` (their values are never shown: they are where secrets live)."""
    if isinstance(node, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in env:
                missing.append((*loc, name))
                return ""
            if filled is not None:
                filled.add(loc)
            return env[name]

        return _ENV_PATTERN.sub(replace, node)
    if isinstance(node, dict):
        return {k: substitute_env(v, (*loc, str(k)), env, missing, filled)
                for k, v in node.items()}  # fmt: skip
    if isinstance(node, list):
        return [substitute_env(v, (*loc, i), env, missing, filled) for i, v in enumerate(node)]
    return node


def line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the YAML node at `loc`, or of its nearest ancestor in the file."""
    node, line = root, None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == str(part)), None)
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            child = node.value[part]
        node = child
    return line if node is None else node.start_mark.line + 1


def data_loc(data: Any, loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """Drop the union tags pydantic puts in locations (`driver.modbus.port` -> `driver.port`)."""
    kept: list[int | str] = []
    node = data
    for pos, part in enumerate(loc):
        if isinstance(node, dict) and part not in node:
            following = loc[pos + 1] if pos + 1 < len(loc) else None
            if following is not None and following in node:
                continue
        kept.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(kept)


def shown_value(
    loc: tuple[int | str, ...], value: Any, filled: set[tuple[int | str, ...]] | None = None
) -> str:
    """How a bad value is shown: never one named like a secret, nor one (or one inside a part)
    that came from an environment variable, whatever the key is called (`pasword: ${PW}`)."""
    if any(word in str(part).lower() for part in loc for word in _SECRET_WORDS):
        return "<hidden>"
    if filled and any(place[: len(loc)] == loc or loc[: len(place)] == place for place in filled):
        return "<from the environment, hidden>"
    if isinstance(value, dict | list):
        return ""
    return repr(value)


class ConfigFileError(ConfigError):
    """A site file that cannot be used; `issues` holds every problem, in file order."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.line or 0, i.path))
        count = len(self.issues)
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in the site file:\n{lines}")
