"""The repair loop: one Connect Fix request per login and breakage episode, delivered to the
partner's endpoint from a durable outbox, and its outcome measured.

Kept import-light on purpose: ``exporter.config`` imports :mod:`.config` from here.
"""
