"""`python -m perpwatch.simulator [options]`: start the venue simulator server (options: server.main)."""

import sys

from .server import main

sys.exit(main())
