"""What every test session shares, whichever folders it collects: the ``slow`` tier.

Every test under ``SLOW_FOLDERS`` is marked ``slow``. The fast loop, ``-m "not slow"``, does not
even import those folders: collecting them costs seconds (their modules and conftests import the
heavy stacks) for tests it would deselect. Any other ``-m`` collects everything and lets pytest
select.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# Every test under these folders starts a real server or builds images: all of them are slow.
SLOW_FOLDERS = (TESTS / "integration", TESTS / "container")
FAST_LOOP = "not slow"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Skip ``SLOW_FOLDERS`` in the fast loop; None leaves the decision to pytest."""
    fast_loop = " ".join(str(config.getoption("markexpr") or "").split()) == FAST_LOOP
    if fast_loop and collection_path.resolve() in SLOW_FOLDERS:
        return True
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test in ``SLOW_FOLDERS``, so that ``-m "not slow"`` leaves them out."""
    for item in items:
        if any(folder in item.path.resolve().parents for folder in SLOW_FOLDERS):
            item.add_marker(pytest.mark.slow)
