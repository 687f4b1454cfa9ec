"""``python -m tfembsize``: the ``tfembsize`` command line (`tfembsize.cli.main`)."""

import sys

from tfembsize.cli import main

if __name__ == "__main__":
    sys.exit(main())
