"""The build report: report.json, report.md and report.html, and ``check`` for CI."""
