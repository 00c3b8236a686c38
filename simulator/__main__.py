"""`python -m perpwatch.simulator`: the venue simulator standalone (simulator/server.py)."""
import sys

from .server import main

sys.exit(main())
