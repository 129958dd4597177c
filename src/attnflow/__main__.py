"""``python -m attnflow``: the command line (see :mod:`attnflow.app.cli`)."""

import sys

from attnflow.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
