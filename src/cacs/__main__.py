"""``python -m cacs`` runs the CLI (same as the ``cacs`` entry point)."""

import sys

from cacs.cli import main

sys.exit(main())
