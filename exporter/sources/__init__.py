"""What every upstream source shares: the HTTP client and transport, retries, rate limits,
the sweep walk, drift counting and the payload reader. The aggregators themselves live in
:mod:`exporter.upstreams`."""
