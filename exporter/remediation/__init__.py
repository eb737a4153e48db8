"""The repair loop: one Connect Fix request per login and breakage episode, delivered to the
partner's endpoint from a durable outbox, and its outcome measured; and one
``consent_renewal`` request per login and consent period before a Finicity consent ends
(:mod:`.renewals`).

Kept import-light on purpose: ``exporter.config`` imports :mod:`.config` from here.
"""
