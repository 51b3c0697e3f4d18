"""``python -m anomalens`` runs the command line."""

import sys

from anomalens.cli import main

sys.exit(main())
