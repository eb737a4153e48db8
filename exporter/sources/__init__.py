"""What every upstream source shares: the HTTP client and transport, retries, rate limits,
the sweep walk, drift counting, the payload reader and the assembly of a source from them
(:class:`~exporter.sources.upstream.UpstreamSource`). The aggregators themselves live in
:mod:`exporter.upstreams`."""
