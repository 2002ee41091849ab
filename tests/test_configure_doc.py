"""docs/configure.md's key reference is generated from the config models: it must be current,
and every key must say what it is for."""

from __future__ import annotations

from pathlib import Path

from agent.config.reference import MARKER, render, sections
from agent.config.site import SiteConfig

DOC = Path(__file__).resolve().parents[1] / "docs/configure.md"


def test_the_key_reference_matches_the_models() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert MARKER in text
    assert text[text.index(MARKER) :] == render(), (
        "docs/configure.md is stale: run `python -m agent.config.reference --write "
        "docs/configure.md`"
    )


def test_every_key_of_every_section_has_a_description() -> None:
    undocumented = [
        f"{section.path}.{field.alias or name}"
        for section in [None, *sections()]
        for name, field in (SiteConfig if section is None else section.model).model_fields.items()
        if not (field.description or "").strip()
    ]
    assert undocumented == []


def test_the_reference_reaches_every_section_a_site_file_can_hold() -> None:
    paths = {section.path for section in sections()}
    expected = (
        "site", "classes.<name>", "classes.<name>.economics (kind: mining)", "devices[]",
        "devices[].driver (type: modbus)", "devices[].driver (type: gpu_node)", "policy.fourcp",
        "prices", "mqtt.tls", "service", "openadr.simple_levels.<name>", "openadr.load_control",
    )  # fmt: skip
    for section in expected:
        assert section in paths
