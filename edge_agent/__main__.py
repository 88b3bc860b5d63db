import sys

from edgeplane.edge_agent.cli import main

sys.exit(main())
