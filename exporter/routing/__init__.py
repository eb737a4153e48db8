"""Routing advice: which aggregator new links to each bank should go to (issue 23, DESIGN
"Routing advice").

- :mod:`.config`: ``routing:`` in the configuration file, and the partner's institution ids.
- :mod:`.advice`: the rule, as pure functions of the observations and the time.
- :mod:`.advisor`: the advice per institution key, kept between evaluations (in memory).
- :mod:`.routes`: ``GET /api/v1/routing`` (JSON, or the UCP preferences with ``?format=ucp``).
"""
