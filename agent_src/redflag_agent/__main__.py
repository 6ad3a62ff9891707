import sys

from redflag_agent.cli import main

sys.exit(main())
