"""Whether a rendered report still shows its suite's current records.

`build_report` stores a fingerprint of the records it rendered in
scores.json: a sha256 over the sorted (cell id, status, created) of the
records the report uses, the manifest's suite hash and the number of
expected cells. Publishing compares it with the fingerprint of the records
now under results/<suite>/ and re-renders a report whose records changed,
so a published page never shows numbers older than the committed records.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from bench.manifest import FILENAME, Manifest, read_manifest
from bench.record import Record, load_records

FIELD = "records_fingerprint"


def records_fingerprint(manifest: Manifest, records: list[Record]) -> str:
    """The fingerprint of what a report of `manifest` shows from `records`."""
    wanted = {c.cell_id for c in manifest.cells}
    rows = sorted((r.cell_id, str(r.status), str(r.created or ""))
                  for r in records if r.cell_id in wanted)
    payload = json.dumps({"suite_hash": manifest.suite_hash, "expected": len(manifest.cells),
                          "records": rows}, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def stored_fingerprint(report_dir: Path) -> str | None:
    """The fingerprint a report was rendered with (None: absent or unreadable scores.json)."""
    try:
        scores = json.loads((Path(report_dir) / "scores.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    value = scores.get(FIELD) if isinstance(scores, dict) else None
    return value if isinstance(value, str) else None


def has_results(results_dir: Path) -> bool:
    """Whether results_dir is a suite's results directory (a manifest or a cells/ folder)."""
    results_dir = Path(results_dir)
    return (results_dir / FILENAME).is_file() or (results_dir / "cells").is_dir()


@dataclass(frozen=True)
class Freshness:
    """A report against its records: `reason` is empty when it shows the current records."""

    current: str
    stored: str | None
    records: int

    @property
    def stale(self) -> bool:
        return self.stored != self.current

    @property
    def reason(self) -> str:
        if not self.stale:
            return ""
        if self.stored is None:
            return f"rendered without a records fingerprint ({self.records} records now)"
        return f"records changed since it was rendered ({self.records} records now)"


def check_report(results_dir: Path, report_dir: Path) -> Freshness:
    """Compare a report with the records under results_dir.

    Raises FileNotFoundError without a manifest, and ManifestError or
    RecordError when the manifest or a record cannot be read.
    """
    results_dir = Path(results_dir)
    manifest = read_manifest(results_dir)
    wanted = {c.cell_id for c in manifest.cells}
    records = [r for r in load_records(results_dir) if r.cell_id in wanted]
    return Freshness(current=records_fingerprint(manifest, records),
                     stored=stored_fingerprint(report_dir), records=len(records))
