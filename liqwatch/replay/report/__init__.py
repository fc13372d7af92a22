"""The post-mortem report of `liqwatch replay`: `summary.json`, PNG plots and `index.html`."""

from liqwatch.replay.report.data import build_summary, dumps, write_report

__all__ = ["build_summary", "dumps", "write_report"]
