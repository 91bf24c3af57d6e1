"""Keep a suite's summary inside another Markdown file (e.g. the project README).

The report writes `summary.md` with links relative to its own folder; this
copies it between `<!-- leaderboard:<suite>:start -->` and `...:end -->`
markers, rewriting those links to be relative to the target file, so the
README shows generated numbers and plots and nothing typed by hand.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from bench.report.build import write_text

_LINK = re.compile(r"(\]\()([^)\s]+)(\))")


def markers(suite: str) -> tuple[str, str]:
    return f"<!-- leaderboard:{suite}:start -->", f"<!-- leaderboard:{suite}:end -->"


def rebase_links(markdown: str, prefix: str) -> str:
    """Prefix relative Markdown link/image targets ('](x.png)') with `prefix`/."""
    def fix(m: re.Match) -> str:
        target = m.group(2)
        if re.match(r"^([a-z][a-z0-9+.-]*:|/|#)", target, re.I) or not prefix or prefix == ".":
            return m.group(0)
        return f"{m.group(1)}{prefix.rstrip('/')}/{target}{m.group(3)}"

    return _LINK.sub(fix, markdown)


def update_readme(readme: Path, suite: str, report_dir: Path) -> bool:
    """Replace the marked block of `readme` with the suite's summary; True if it changed.

    Raises ValueError when the markers are missing or out of order, and
    FileNotFoundError when the suite has no rendered report yet.
    """
    readme, report_dir = Path(readme), Path(report_dir)
    summary_path = report_dir / "summary.md"
    if not summary_path.exists():
        raise FileNotFoundError(f"{summary_path} does not exist; render the report first "
                                f"(lowrank-bench report {suite})")
    text = readme.read_text()
    start, end = markers(suite)
    i, j = text.find(start), text.find(end)
    if i < 0 or j < 0 or j < i:
        raise ValueError(f"{readme}: needs the markers '{start}' and then '{end}'")
    prefix = Path(os.path.relpath(report_dir.resolve(), readme.resolve().parent)).as_posix()
    body = rebase_links(summary_path.read_text().strip(), prefix)
    new = text[: i + len(start)] + "\n" + body + "\n" + text[j:]
    if new == text:
        return False
    write_text(readme, new)
    return True
