"""``python -m ptychonn_ophyd`` runs the ``ptychonn-ophyd`` command."""

import sys

from ptychonn_ophyd.cli import main

sys.exit(main())
