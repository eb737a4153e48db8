"""Push: aggregator webhooks, verified, persisted, answered, then turned into owner re-reads.

``config`` (settings), ``verify`` (signatures, Basic auth), ``events`` (what a delivery asks
for), ``inbox`` (the durable SQLite inbox with its dedupe keys), ``app`` (the Starlette
routes), ``processor`` (re-reads and applies), ``observer`` (what the metrics see).
"""
