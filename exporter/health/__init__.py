"""Institution health, per aggregator and side by side (issue 13, DESIGN "Institution health").

- :mod:`.sides`: which side of the connection a category blames (institution, user,
  aggregator-or-other), Plaid-style; the thresholds of the recorded state.
- :mod:`.declared`: what Finicity declares (``status``, beta ``productionStatus``).
- :mod:`.keys`: the institution key that joins one bank across aggregators.
- :mod:`.directory`: the institution facts the sources looked up (names, home pages, declared
  statuses), keyed.
- :mod:`.report`: the breakdown per institution computed from a tracker snapshot.
- :mod:`.routes`: ``GET /api/v1/institutions`` (JSON) and ``GET /status`` (HTML).
"""
