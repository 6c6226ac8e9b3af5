"""`python -m svdzoo ...`: the `svdzoo` command, for environments without its script."""

import sys

from svdzoo.cli import main

if __name__ == "__main__":
    sys.exit(main())
