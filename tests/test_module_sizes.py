"""No module of the package does several jobs: as a rule of thumb none is over 700 lines."""

from __future__ import annotations

from pathlib import Path

import tfembsize

LIMIT = 700


def test_every_module_is_at_most_700_lines():
    package = Path(tfembsize.__file__).resolve().parent
    modules = sorted(package.rglob("*.py"))
    assert len(modules) > 50  # the scan sees the package
    long = {}
    for path in modules:
        with open(path, encoding="utf-8") as f:
            n = sum(1 for _ in f)
        if n > LIMIT:
            long[path.relative_to(package).as_posix()] = n
    assert not long, f"modules over {LIMIT} lines (split them by job): {long}"
