"""The client: addresses, daemon info, metrics, sandbox listings and handles."""

from __future__ import annotations

import os

import pytest

from emberd import Client, Sandbox
from emberd._http import base_url


def test_addresses() -> None:
    assert base_url("127.0.0.1:7777") == "http://127.0.0.1:7777"
    assert base_url("http://localhost:1234/") == "http://localhost:1234"
    assert base_url("https://emberd.example") == "https://emberd.example"


def test_default_address_comes_from_the_environment(addr: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with Client() as c:
        assert c.base_url == base_url(os.environ["EMBERD_ADDR"]) and c.health()
    monkeypatch.delenv("EMBERD_ADDR")
    with Client() as c:
        assert c.base_url == "http://127.0.0.1:7777"


def test_info_and_metrics(client: Client) -> None:
    info = client.info()
    assert {"python", "shell"} <= set(info.packs)
    assert info.guest_ram_mib > 0 and info.boot_path
    text = client.metrics()
    assert "# TYPE" in text and "emberd_" in text


def test_list_connect_and_info(client: Client, sb: Sandbox) -> None:
    assert sb.id in [s.id for s in Sandbox.list(client)]
    info = sb.info()
    assert (info.id, info.pack, info.state) == (sb.id, "python", "running")
    assert info.created_at.endswith("Z") and info.boot_path is not None
    other = Sandbox.connect(sb.id, client=client)
    assert other.pack == "python"
    assert other.exec("print('same sandbox')").stdout == "same sandbox\n"


def test_create_options(client: Client) -> None:
    with Sandbox.create(client=client, ttl_s=600, idle_timeout_s=300) as s:
        info = s.info()
        assert info.expires_at is not None and info.idle_expires_at is not None


def test_a_sandbox_without_a_client_makes_its_own(addr: str) -> None:
    with Sandbox.create() as s:
        assert s.exec("print(1)").stdout == "1\n"
    assert s.client._http.is_closed
