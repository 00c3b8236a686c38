import sys

from perpwatch.cli import main

sys.exit(main())
