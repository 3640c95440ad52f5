"""`python -m trustvlm`."""

import sys

from trustvlm.cli import main

sys.exit(main())
