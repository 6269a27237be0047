"""What every test session shares, whichever folders it collects: the ``slow`` tier.

Every test under ``SLOW_FOLDERS`` is marked ``slow``. When ``-m`` can select no slow test (as
``-m "not slow"``, the fast loop), those folders are not even imported: collecting them costs
seconds (their modules and conftests import the heavy stacks) for tests that would be deselected.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# Every test under these folders starts a real server or builds images: all of them are slow.
SLOW_FOLDERS = (TESTS / "integration", TESTS / "container")
# Marker names in an -m expression (pytest's own identifier characters), and its operators.
_NAME = re.compile(r"[\w:+\-.\[\]\\/]+")
_OPERATORS = {"and", "or", "not"}
# Beyond this many other names, telling whether -m leaves out every slow test is not worth it.
_MAX_OTHER_NAMES = 8


def _selects_no_slow_test(markexpr: str) -> bool:
    """True when the -m expression ``markexpr`` is false for every test marked ``slow``, whatever
    its other markers; False when it may select one (or when it cannot be read: pytest then
    reports it itself)."""
    try:
        # The parser of -m itself: private to pytest, so a pytest without it collects everything.
        from _pytest.mark.expression import Expression

        expression = Expression.compile(markexpr)
    except Exception:
        return False
    others = sorted(set(_NAME.findall(markexpr)) - _OPERATORS - {"slow"})
    if len(others) > _MAX_OTHER_NAMES:
        return False
    for present in itertools.product((False, True), repeat=len(others)):
        markers = {"slow", *(name for name, on in zip(others, present, strict=True) if on)}
        if expression.evaluate(lambda name, markers=markers, **_: name in markers):
            return False
    return True


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Skip ``SLOW_FOLDERS`` when ``-m`` can select none of their tests; None leaves the decision
    to pytest (``--ignore``, ``norecursedirs``)."""
    markexpr = config.getoption("markexpr")
    if collection_path.resolve() in SLOW_FOLDERS and markexpr and _selects_no_slow_test(markexpr):
        return True
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test in ``SLOW_FOLDERS``, so that ``-m "not slow"`` leaves them out."""
    for item in items:
        if any(folder in item.path.resolve().parents for folder in SLOW_FOLDERS):
            item.add_marker(pytest.mark.slow)
