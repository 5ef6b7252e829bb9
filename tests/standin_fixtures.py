"""Pytest fixtures around the stand-in remote provider. Import the fixtures into a test module:

from tests.standin_fixtures import STANDIN_KEY, standin  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.standin_provider import StandinProvider

# A recognisable fake key, so that tests can assert it never leaks into messages or logs.
STANDIN_KEY = "sk-standin-9f2c7d1e-do-not-leak"


@pytest.fixture(name="standin")
def standin_fixture() -> Iterator[StandinProvider]:
    """A fresh stand-in provider that requires `Authorization: Bearer STANDIN_KEY`."""
    with StandinProvider(api_key=STANDIN_KEY) as provider:
        yield provider
