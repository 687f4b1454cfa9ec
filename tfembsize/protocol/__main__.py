"""``python -m tfembsize.protocol``: the paper protocol's command line (`cli.main`)."""

import sys

from tfembsize.protocol.cli import main

if __name__ == "__main__":
    sys.exit(main())
