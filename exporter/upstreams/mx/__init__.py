"""MX Platform API: the poller, the push re-read, Connect widget URLs and every payload
model the agent reads from it."""

from exporter.upstreams.mx.source import MxSource

__all__ = ["MxSource"]
