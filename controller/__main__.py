import sys

from edgeplane.controller.cli.main import main

sys.exit(main())
