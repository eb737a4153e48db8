"""``python -m exporter.metrics > docs/metrics.md``: the metrics reference from the catalogue."""

from exporter.metrics.catalog import render_markdown

print(render_markdown(), end="")
