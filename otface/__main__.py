"""``python -m otface``: the command line, the form torchrun starts (``torchrun ... -m otface train``)."""

import sys

from otface.cli import main

sys.exit(main())
