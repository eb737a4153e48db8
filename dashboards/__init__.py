"""The Grafana dashboards generator (python -m dashboards.generate) and its committed JSON."""
