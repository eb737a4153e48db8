"""Finicity (Mastercard Open Finance US): the poller, the push re-read, Connect Fix links and
every payload model the agent reads from it."""

from exporter.upstreams.finicity.source import FinicitySource

__all__ = ["FinicitySource"]
