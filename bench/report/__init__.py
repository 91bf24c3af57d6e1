"""Leaderboards from records: Markdown and HTML (jinja2, autoescaped), plots, exports, site.

`build_report` renders one suite into reports/<suite>/; `publish_site` gathers
every suite's report into one static site; `update_readme` writes a suite's
summary between markers in a Markdown file.
"""

from bench.report.build import build_report, md_escape, tier_title
from bench.report.readme import update_readme
from bench.report.site import publish_site
from bench.report.tables import flatten, flatten_all, flatten_record

__all__ = ["build_report", "flatten", "flatten_all", "flatten_record", "md_escape",
           "publish_site", "tier_title", "update_readme"]
