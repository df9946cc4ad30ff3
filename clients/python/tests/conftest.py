"""Fixtures for the SDK suite, which runs against a real daemon at EMBERD_ADDR
(``scripts/with-daemon.py`` starts one). Without EMBERD_ADDR every test fails."""

from __future__ import annotations

import os
from typing import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from emberd import AsyncClient, AsyncSandbox, Client, Sandbox


@pytest.fixture(scope="session")
def addr() -> str:
    a = os.environ.get("EMBERD_ADDR")
    if not a:
        pytest.fail("EMBERD_ADDR is not set: run the suite through scripts/with-daemon.py")
    return a


@pytest.fixture(scope="session")
def client(addr: str) -> Iterator[Client]:
    with Client(addr) as c:
        assert c.health(), f"no emberd answers at {addr}"
        yield c


@pytest.fixture(scope="module")
def sb(client: Client) -> Iterator[Sandbox]:
    """One python sandbox shared by the tests of a module."""
    with Sandbox.create(pack="python", client=client) as s:
        yield s


@pytest_asyncio.fixture(scope="module")
async def aclient(addr: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(addr) as c:
        yield c


@pytest_asyncio.fixture(scope="module")
async def asb(aclient: AsyncClient) -> AsyncIterator[AsyncSandbox]:
    async with AsyncSandbox.create(pack="python", client=aclient) as s:
        yield s
