"""``python -m service`` is ``hdr-service``."""

import sys

from .cli import main

sys.exit(main())
