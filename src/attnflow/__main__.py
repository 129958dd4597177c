"""``python -m attnflow``: the command line (see :mod:`attnflow.cli`)."""

import sys

from attnflow.cli import main

if __name__ == "__main__":
    sys.exit(main())
