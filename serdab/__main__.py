"""`python -m serdab` runs the CLI."""

import sys

from serdab.cli.app import main

sys.exit(main())
