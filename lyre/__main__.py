"""`python -m lyre ...` is the same as `lyre ...` (torchrun launches it this way)."""

import sys

from lyre.cli import main

sys.exit(main())
