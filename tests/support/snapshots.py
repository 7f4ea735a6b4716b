"""The recorded snapshots (JSON files in tests/data) that the snapshot tests compare with."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def stored_snapshots(path: Path, record: bool) -> Iterator[dict]:
    """Yield the snapshots stored in ``path`` ({} if there are none yet); with ``record``, write
    back what the tests put into them once they have run. The body of a module-scoped fixture:
    ``yield from stored_snapshots(SNAPSHOTS, RECORD)``."""
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    yield data
    if record:
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
