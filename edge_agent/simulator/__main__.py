import sys

from edgeplane.edge_agent.simulator.cli import main

sys.exit(main())
