"""``python -m trustvlm.benchmarks``: the CPU benchmark suite (``make bench``)."""

import sys

from trustvlm.benchmarks.suite import main

sys.exit(main())
