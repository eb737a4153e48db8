"""The agent's HTTP side: the metrics listener, the exporter-toolkit web config (TLS, basic
auth) both listeners share, their connection limits and listen addresses."""
