"""Fixtures of the recipe tests (see ``recipe_helpers``)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from recipe_helpers import load_runner, write_fake_data


@pytest.fixture(scope="session")
def runner() -> ModuleType:
    return load_runner()


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory) -> Path:
    return write_fake_data(tmp_path_factory.mktemp("data"))
