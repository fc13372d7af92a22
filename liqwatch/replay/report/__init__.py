"""The post-mortem report of `liqwatch replay`, in three parts: `data` builds the summary (`summary.json`, every
figure shown, deterministic), `plots` draws the PNGs from it, and `page` renders `index.html` through the template
`page.html.j2` and writes the report directory.

    summary = build_summary(window, runs, limits)     # plain data: same window → same bytes of dumps(summary)
    write_report(out_dir, summary, command)          # summary.json, *.png, alerts-<config>.jsonl, index.html
"""

from liqwatch.replay.report.data import build_summary, dumps
from liqwatch.replay.report.page import write_report

__all__ = ["build_summary", "dumps", "write_report"]
