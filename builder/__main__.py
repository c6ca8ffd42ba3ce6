"""``python -m builder`` runs the pybuild command line."""

import sys

from builder.cli import main

sys.exit(main())
