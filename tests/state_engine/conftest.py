from __future__ import annotations

import pytest

from tests.state_engine.helpers import load_lobster, lobster_available, make_market


@pytest.fixture(scope="session")
def market():
    return make_market()


@pytest.fixture(scope="session")
def lobster():
    if not lobster_available():
        pytest.skip("the LOBSTER sample is not in ../shared/data")
    return load_lobster()
