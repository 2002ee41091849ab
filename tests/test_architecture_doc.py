"""docs/architecture.md names real code: every file path it cites exists, and every
`Class.method` it cites is defined (the path of one dispatch must match the code)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()
SOURCES = {p: p.read_text() for p in [*ROOT.glob("agent/**/*.py"), *ROOT.glob("adapters/**/*.py")]}


def test_every_cited_file_exists() -> None:
    cited = set(re.findall(r"`((?:agent|adapters)/[\w/]+\.py)`", DOC))
    assert cited, "the document cites no file"
    missing = sorted(c for c in cited if not (ROOT / c).exists())
    assert not missing, missing


def test_every_cited_method_is_defined_in_its_class() -> None:
    cited = set(re.findall(r"`([A-Z]\w+)\.(\w+)(?:\(\))?`", DOC))
    assert len(cited) >= 5
    missing = []
    for cls, method in sorted(cited):
        body = next((text.split(f"class {cls}", 1)[1] for text in SOURCES.values()
                     if re.search(rf"^class {cls}\b", text, re.M)), None)  # fmt: skip
        if body is None:
            missing.append(f"class {cls}")
            continue
        own = re.split(r"^class ", body, maxsplit=1, flags=re.M)[0]  # up to the next class
        if not re.search(rf"^    (?:async )?def {method}\(", own, re.M):
            missing.append(f"{cls}.{method}")
    assert not missing, missing
