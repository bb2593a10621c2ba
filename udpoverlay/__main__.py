"""`python -m udpoverlay ...` = the `udpoverlay` command."""

import sys

from udpoverlay.entry import main

sys.exit(main())
