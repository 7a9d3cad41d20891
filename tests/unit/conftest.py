"""The unit layer runs with no JVM and no network: a test here that asks for the stack (directly
or through `settings`, `store` or `zoo`) belongs in tests/integration, and fails collection here."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent
STACK_FIXTURES = {"stack", "settings", "store", "zoo"}


def pytest_collection_modifyitems(items):
    misplaced = [item.nodeid for item in items
                 if Path(str(item.path)).is_relative_to(HERE) and STACK_FIXTURES & set(item.fixturenames)]
    if misplaced:
        raise pytest.UsageError("unit tests that need the stack (move them to tests/integration): "
                                + ", ".join(misplaced))
