"""``python -m torchzero``: the same as the ``torchzero`` command."""

import sys

from .cli import main

sys.exit(main())
