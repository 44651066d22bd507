import sys

from edgefleet.fleet.balena.cli_commands import main

sys.exit(main())
