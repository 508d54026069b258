"""python -m calibration <command>: the command users know, forwarded to the offline CLI.

The request-time core never imports offline code; this entry point is the one, declared
exception (`ignore_imports` in pyproject's import-linter contracts): it is run as a program,
never imported by serving.
"""

import sys

from offline.cli import main

if __name__ == "__main__":
    sys.exit(main())
