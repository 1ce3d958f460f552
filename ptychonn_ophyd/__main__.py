"""``python -m ptychonn_ophyd`` runs the ``ptychonn-ophyd`` command."""

import sys

from .cli import main

sys.exit(main())
