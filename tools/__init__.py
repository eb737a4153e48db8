"""Maintenance scripts (python -m tools.build_catalog)."""
