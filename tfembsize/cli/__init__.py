"""The ``tfembsize`` command line: ``search``, ``retrain``, ``export``, ``report``, ``plot``.

Installed as the ``tfembsize`` console script and runnable as ``python -m tfembsize``. Each
subcommand is one module of this package; they share the run directory (`RunDir`), the
protocol objects of a run (`tfembsize.cli.session.Session`) and the exit codes
(`EXIT_CODES`). See docs/cli.md.
"""

from tfembsize.cli._common import EXIT_CODES, CliError
from tfembsize.cli.main import main
from tfembsize.cli.run_dir import RunDir

__all__ = ["main", "EXIT_CODES", "CliError", "RunDir"]
