"""Leaderboards from records and the run's manifest: Markdown and HTML, plots, exports, site.

`build_report` renders one suite's results folder into reports/<suite>/;
`publish_site` gathers every suite's report into one static site;
`update_readme` writes a suite's summary between markers in a Markdown file.
Nothing here expands a suite or imports a method: what a report needs
travels in the records (`bench.record`) and the manifest (`bench.manifest`).
"""

from bench.report.analysis import tier_title
from bench.report.build import build_report
from bench.report.present import md_escape
from bench.report.readme import update_readme
from bench.report.site import publish_site
from bench.report.tables import flatten_record, long_table, record_view, tidy_table

__all__ = ["build_report", "flatten_record", "long_table", "md_escape", "publish_site",
           "record_view", "tidy_table", "tier_title", "update_readme"]
