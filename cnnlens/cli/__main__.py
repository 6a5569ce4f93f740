"""``python -m cnnlens.cli``: the same as the ``cnnlens`` command."""

import sys

from . import main

sys.exit(main())
