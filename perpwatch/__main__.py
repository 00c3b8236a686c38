"""`python -m perpwatch`: the perpwatch command line (perpwatch/cli.py)."""
import sys

from perpwatch.cli import main

sys.exit(main())
