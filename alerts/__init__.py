"""The alert rules generator (python -m alerts.generate) and its committed outputs."""
