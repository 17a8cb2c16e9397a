"""``python -m edge`` is ``masf-edge``."""

import sys

from edge.cli import main

sys.exit(main())
