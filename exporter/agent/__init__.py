"""The running agent: its assembly from a configuration and the sweeps it schedules."""

from exporter.agent.assembly import Agent

__all__ = ["Agent"]
