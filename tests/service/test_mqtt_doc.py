"""docs/mqtt.md is generated from the message models: a stale document fails here."""

from __future__ import annotations

from pathlib import Path

from agent.service.mqtt_doc import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"


def test_mqtt_doc_matches_the_models() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/mqtt.md is stale: run `python -m agent.service.mqtt_doc > docs/mqtt.md`"
    )
