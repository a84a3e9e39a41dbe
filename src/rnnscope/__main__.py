"""`python -m rnnscope` runs the command line."""

import sys

from rnnscope.cli.main import main

sys.exit(main())
