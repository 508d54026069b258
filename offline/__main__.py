"""python -m offline <command>: see `offline.cli`."""

import sys

from offline.cli import main

if __name__ == "__main__":
    sys.exit(main())
