"""``python -m cnnlens``: the same as the ``cnnlens`` command."""

import sys

from .cli import main

sys.exit(main())
