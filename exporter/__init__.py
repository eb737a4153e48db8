"""openfinance-exporter: bank-connection health at Finicity and MX as Prometheus metrics."""

__version__ = "0.1.0"
