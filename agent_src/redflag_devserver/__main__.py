"""`python3 -m redflag_devserver`."""

import sys

from redflag_devserver.cli import main

sys.exit(main())
