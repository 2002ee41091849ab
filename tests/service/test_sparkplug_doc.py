"""docs/sparkplug.md is generated from the edge node's metric tables."""

from __future__ import annotations

from pathlib import Path

from agent.app.sparkplug_doc import render

DOC = Path(__file__).resolve().parents[2] / "docs/sparkplug.md"


def test_sparkplug_doc_matches_the_metric_tables() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/sparkplug.md is stale: run `python -m agent.app.sparkplug_doc > docs/sparkplug.md`"
    )
