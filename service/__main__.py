"""``python -m service`` is ``hdr-service``."""

import sys

from service.cli import main

sys.exit(main())
