import sys

from edgeplane.edge_agent.simulator.fleet import main

sys.exit(main())
