"""``python -m push_worker CONFIG``."""

import sys

from .cli import main

sys.exit(main())
