import sys

from edgeplane.controller.cli import main

sys.exit(main())
