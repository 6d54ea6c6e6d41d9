"""`python -m server ...` (see server/cli.py)."""

import sys

from .cli import main

sys.exit(main())
