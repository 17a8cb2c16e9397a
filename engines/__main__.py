"""``python -m engines`` = ``masf-engine``."""

import sys

from engines.cli import main

sys.exit(main())
