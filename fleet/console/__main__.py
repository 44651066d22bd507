"""`python -m edgefleet.fleet.console`: start the console with its settings from EDGEFLEET_* variables."""

from __future__ import annotations

import sys

from edgefleet.fleet.console.cli_commands import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
