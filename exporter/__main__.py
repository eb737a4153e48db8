"""``python -m exporter``: the same command line as ``openfinance-exporter``."""

import sys

from exporter.cli import main

sys.exit(main())
