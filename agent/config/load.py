"""Reading a site file: YAML in, `${ENV}` substituted, cross-field checks, every problem at once.

Strict by design: unknown keys are errors, every error is reported at once with its path and
line, nothing is clamped silently. `${ENV_VAR}` anywhere in a string is replaced from the
environment at load time, so secrets stay out of the file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from agent.config.plausible import plausibility_problems
from agent.config.problems import (
    ConfigFileError,
    ConfigIssue,
    data_loc,
    format_path,
    line_of,
    shown_value,
    substitute_env,
)
from agent.config.site import ServiceConfig, SiteConfig

__all__ = ["OFFLINE_SECTIONS", "load_config", "parse_config"]

Problem = tuple[tuple[int | str, ...], Any, str]  # where, the value, why
_OVER_MQTT = frozenset({"mqtt", "gpu_node"})  # driver types that need the site's MQTT connection


def _cross_checks(raw: Any) -> list[tuple[tuple[int | str, ...], Any, str]]:
    """Checks that span fields, run on the raw data so they report alongside pydantic's."""
    problems: list[tuple[tuple[int | str, ...], Any, str]] = []
    if not isinstance(raw, dict):
        return problems
    classes = raw.get("classes") if isinstance(raw.get("classes"), dict) else {}
    assert isinstance(classes, dict)
    problems.extend(_follower_checks(raw, classes))
    problems.extend(_pool_checks(raw, classes))
    problems.extend(plausibility_problems(raw))
    openadr, prices = raw.get("openadr"), raw.get("prices")
    source = prices.get("source", "ercot-mis") if isinstance(prices, dict) else "ercot-mis"
    if isinstance(openadr, dict) and openadr.get("price_signals") is True and source != "none":
        problems.append((("openadr", "price_signals"), True, f"prices come from OpenADR events "
                         f"here: set prices.source to none (it is {source})"))  # fmt: skip
    if raw.get("sparkplug") and not raw.get("mqtt"):
        problems.append((("sparkplug",), "", "Sparkplug B runs on the site's MQTT broker: add an "
                         "`mqtt` section"))  # fmt: skip
    devices = raw.get("devices") if isinstance(raw.get("devices"), list) else []
    assert isinstance(devices, list)
    seen: dict[str, int] = {}
    for i, device in enumerate(devices):
        if not isinstance(device, dict):
            continue
        load_class = device.get("class")
        if load_class is not None and classes and load_class not in classes:
            known = ", ".join(sorted(map(str, classes)))
            problems.append((("devices", i, "class"), load_class, f"unknown class (have {known})"))
        rated = device.get("rated_kw")
        for field_name in ("min_kw", "idle_kw"):
            value = device.get(field_name)
            if isinstance(rated, int | float) and isinstance(value, int | float) and value > rated:
                problems.append(
                    (
                        ("devices", i, field_name),
                        value,
                        f"exceeds rated_kw {rated}: must be <= rated",
                    )
                )
        driver = device.get("driver")
        if isinstance(driver, dict) and driver.get("type") in _OVER_MQTT and not raw.get("mqtt"):
            problems.append(
                (("devices", i, "driver", "type"), driver.get("type"),
                 "this device is reached over MQTT but the site file has no `mqtt` section")
            )  # fmt: skip
        device_id = device.get("id")
        if isinstance(device_id, str):
            if device_id in seen:
                problems.append(
                    (("devices", i, "id"), device_id, f"duplicate of devices[{seen[device_id]}].id")
                )
            seen.setdefault(device_id, i)
    return problems


def _pool_checks(raw: Any, classes: dict[Any, Any]) -> list[Problem]:
    """A pool the engine sizes names a protected class of its own (its GPU servers)."""
    section = raw.get("gpu_demand")
    pools = section.get("pools") if isinstance(section, dict) else None
    problems: list[Problem] = []
    owner: dict[str, str] = {}
    for name, pool in pools.items() if isinstance(pools, dict) else ():
        engine = pool.get("engine") if isinstance(pool, dict) else None
        load_class = engine.get("load_class") if isinstance(engine, dict) else None
        if not isinstance(load_class, str):
            continue
        at = ("gpu_demand", "pools", str(name), "engine", "load_class")
        spec = classes.get(load_class)
        if spec is None:
            known = ", ".join(sorted(map(str, classes)))
            problems.append((at, load_class, f"names no load class (have {known})"))
        elif isinstance(spec, dict) and str(spec.get("priority")).lower() != "protected":
            why = f"{load_class} is {spec.get('priority')}"
            problems.append((at, load_class, "a pool's servers are a protected class (inference "
                             f"under contract); {why}"))  # fmt: skip
        elif load_class in owner:
            problems.append((at, load_class, f"already the class of pool {owner[load_class]}"))
        owner.setdefault(load_class, str(name))
    return problems


def _follower_checks(raw: Any, classes: dict[Any, Any]) -> list[Problem]:
    """A follower (cooling) must have a leader it can follow: another class with devices, that
    is not itself a follower, and no economics of its own (it runs for its leader)."""
    devices = raw.get("devices") if isinstance(raw.get("devices"), list) else []
    with_devices = {d.get("class") for d in devices if isinstance(d, dict)}
    problems: list[Problem] = []
    for name, spec in classes.items():
        follows = spec.get("follows") if isinstance(spec, dict) else None
        if follows is None:
            continue
        at = ("classes", str(name), "follows")
        leader = classes.get(follows)
        if leader is None:
            problems.append((at, follows, "names no load class"))
        elif follows == name:
            problems.append((at, follows, "a class cannot follow itself"))
        elif isinstance(leader, dict) and leader.get("follows") is not None:
            problems.append((at, follows, f"{follows} follows {leader.get('follows')} itself: "
                             "follow the class that draws the load"))  # fmt: skip
        elif follows not in with_devices:
            problems.append((at, follows, "that class has no devices: nothing to follow"))
        if isinstance(spec, dict) and spec.get("economics") is not None:
            why = "a follower runs for its leader and has no economics of its own"
            problems.append((("classes", str(name), "economics"), "", why))
    return problems


MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_EXPANDED_NODES = 200_000  # aliases expanded; a 10,000-device site uses `count`, not copies


def _bounded_yaml(text: str) -> yaml.Node | None:
    """Compose the file, refusing what would cost too much to build: a file over 4 MiB, or
    aliases that expand to more than MAX_EXPANDED_NODES (a "billion laughs"). Raises
    yaml.YAMLError."""
    if len(text) > MAX_FILE_BYTES:
        raise yaml.YAMLError(f"the file is larger than {MAX_FILE_BYTES // 1024 // 1024} MiB")
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None and _expanded_size(root) > MAX_EXPANDED_NODES:
        raise yaml.YAMLError(
            f"aliases (*name) expand to more than {MAX_EXPANDED_NODES:,} nodes: refused"
        )
    return root


def _no_duplicate_keys(node: yaml.MappingNode) -> None:
    """YAML says keys are unique; PyYAML keeps the last silently. A repeated key is a mistake
    (two `site:` blocks, a pasted device), so it is an error naming both lines."""
    seen: dict[str, int] = {}
    for key, _value in node.value:
        if not isinstance(key, yaml.ScalarNode):
            continue
        line = key.start_mark.line + 1
        if key.value in seen:
            raise yaml.YAMLError(
                f"duplicate key {key.value!r} on line {line} (first on line {seen[key.value]})"
            )
        seen[key.value] = line


def _expanded_size(root: yaml.Node) -> int:
    """Nodes the document has once every alias is expanded; linear in the distinct nodes."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()  # being counted: met again below itself means a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            continue
        if isinstance(node, yaml.MappingNode):
            _no_duplicate_keys(node)
            children = [c for pair in node.value for c in pair]
        else:
            children = list(node.value)
        if children_done:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            open_.discard(id(node))
            continue
        if any(id(c) in open_ or c is node for c in children):
            raise yaml.YAMLError("an alias refers to the node that contains it")
        open_.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def parse_config(
    text: str,
    *,
    file: str = "<site>",
    env: Mapping[str, str] | None = None,
    sections: frozenset[str] | None = None,
) -> SiteConfig:
    """Parse and validate a site file; raises ConfigError listing every issue (see .issues).

    `sections`: read only these top-level sections (and devices without their drivers unless
    "drivers" is named), for commands that need no connection: the others are skipped whole, so
    their `${SECRETS}` need not be set. Unknown top-level keys are still reported."""
    environment = os.environ if env is None else env
    try:
        root = _bounded_yaml(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        issue = ConfigIssue(file=file, path="", line=line, value="", message=f"not YAML: {exc}")
        raise ConfigFileError([issue]) from None
    if not isinstance(raw, dict):
        issue = ConfigIssue(file=file, path="", line=1, value="", message="must be a mapping")
        raise ConfigFileError([issue])

    if sections is not None:
        raw = _only(raw, sections)
    missing: list[tuple[Any, ...]] = []
    filled: set[tuple[int | str, ...]] = set()
    data = substitute_env(raw, (), environment, missing, filled)
    issues = [
        ConfigIssue(
            file=file,
            path=format_path(m[:-1]),
            line=line_of(root, m[:-1]),
            value="",
            message=f"environment variable {m[-1]} is not set",
        )
        for m in missing
    ]
    for loc, value, message in _cross_checks(data):
        issues.append(
            ConfigIssue(
                file=file,
                path=format_path(loc),
                line=line_of(root, loc),
                value=shown_value(loc, value, filled),
                message=message,
            )
        )
    try:
        config = SiteConfig.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            loc = data_loc(data, tuple(error["loc"]))
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key"
            issues.append(
                ConfigIssue(
                    file=file,
                    path=format_path(loc),
                    line=line_of(root, loc),
                    value=shown_value(loc, error.get("input"), filled),
                    message=message,
                )
            )
        config = None
    if issues:
        raise ConfigFileError(issues)
    assert config is not None
    config._literal_secrets = _literal_secrets(data, filled)
    return config


def _only(raw: dict[Any, Any], sections: frozenset[str]) -> dict[Any, Any]:
    known = SiteConfig.model_fields.keys()
    kept = {k: v for k, v in raw.items() if k in sections or k not in known}
    devices = kept.get("devices")
    if "drivers" not in sections and isinstance(devices, list):
        kept["devices"] = [
            {k: v for k, v in d.items() if k != "driver"} if isinstance(d, dict) else d
            for d in devices
        ]
    return kept


# what a replay of the site's history reads: no connections, no secrets, no drivers (the
# inference pools' engine settings, not their endpoints, are what a hybrid replay uses)
OFFLINE_SECTIONS = frozenset({"site", "classes", "devices", "policy", "gpu_demand"})

# field names that hold a secret wherever they sit (mqtt, drivers, openadr3, prices)
_SECRET_NAMES = frozenset({"password", "hmac_secret", "hmac_key", "client_secret", "secret",
                           "token", "api_key", "subscription_key"})  # fmt: skip


def _literal_secrets(data: Any, filled: set[tuple[int | str, ...]],
                     at: tuple[int | str, ...] = ()) -> list[str]:  # fmt: skip
    """Secret fields anywhere in the file whose value is written there, not taken from the
    environment (`${VAR}`)."""
    found: list[str] = []
    items: list[tuple[int | str, Any]] = (
        list(data.items()) if isinstance(data, dict)
        else list(enumerate(data)) if isinstance(data, list) else []
    )  # fmt: skip
    for key, value in items:
        path = (*at, key if isinstance(key, int) else str(key))
        secret = str(key) in _SECRET_NAMES or (len(at) >= 1 and at[-1] == "hmac_keys")
        if secret and isinstance(value, str) and path not in filled:
            found.append(format_path(path))
        elif isinstance(value, dict | list):
            found += _literal_secrets(value, filled, path)
    return found


def load_config(
    path: Path, env: Mapping[str, str] | None = None, sections: frozenset[str] | None = None
) -> SiteConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = "not a UTF-8 text file" if isinstance(exc, UnicodeDecodeError) else str(exc)
        issue = ConfigIssue(file=str(path), path="", line=None, value="", message=why)
        raise ConfigFileError([issue]) from None
    config = parse_config(text, file=str(path), env=env, sections=sections)
    with contextlib.suppress(OSError):
        if config._literal_secrets and path.stat().st_mode & 0o004:
            config._world_readable = True
    return config


def database_of(path: Path, env: Mapping[str, str] | None = None) -> Path:
    """`service.database` of a site file, read without the rest of it (its secrets, drivers):
    for the commands that only read the database. ConfigFileError when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
        root = _bounded_yaml(text)
        raw = yaml.safe_load(text) if root is not None else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        issue = ConfigIssue(file=str(path), path="", line=None, value="", message=str(exc))
        raise ConfigFileError([issue]) from None
    service = raw.get("service") if isinstance(raw, dict) else None
    value = service.get("database") if isinstance(service, dict) else None
    if value is None:
        return ServiceConfig().database
    missing: list[tuple[Any, ...]] = []
    text_value = substitute_env(str(value), ("service", "database"), env or os.environ, missing)
    if missing:
        why = f"environment variable {missing[0][-1]} is not set"
        issue = ConfigIssue(file=str(path), path="service.database", line=None, value="",
                            message=why)  # fmt: skip
        raise ConfigFileError([issue])
    return Path(text_value)
