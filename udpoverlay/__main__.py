"""`python -m udpoverlay ...` = the `udpoverlay` command."""

import sys

from udpoverlay.cli import main

sys.exit(main())
