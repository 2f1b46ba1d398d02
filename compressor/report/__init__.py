"""The build report and ``check`` for CI.

schema.py: the Report (pydantic); report.json is its dump. sections.py: the report's sections,
built once as blocks (blocks.py; tables are mcompress.core.sections.Table, which tasks and targets
contribute too: contributed.py, ``Report.sections``). markdown.py and html.py (charts: svg.py) render
those blocks; write.py writes the three files; check.py judges a report against a baseline.
"""
