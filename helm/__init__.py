"""The Helm chart and the script that copies the generated files into it (python -m helm.sync)."""
