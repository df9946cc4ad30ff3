"""The LLM mode: a model behind an OpenAI-compatible endpoint drives the battery through
`run_code`. A scripted server on loopback plays the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from containment.actions import select
from containment.agents import LlmAgent
from containment.battery import Battery

from fake_openai import FakeOpenAI

RUN = Path(__file__).resolve().parents[1] / "run.py"


@pytest.fixture
def model() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI()
    yield server
    server.close()


def test_the_model_runs_the_task_through_run_code_and_the_host_run_trips(model: FakeOpenAI) -> None:
    agent = LlmAgent("scripted-model", base_url=model.base_url, api_key="sk-test")
    battery = Battery(agent, None, log=False)
    try:
        [outcome] = battery.run(select(["read-secrets"]), host=True, sandbox=False)
        root = battery.layout.root
    finally:
        battery.close()
        agent.close()

    wires = {t.wire for t in outcome.host.trips}
    assert {"honeytoken-read", "secret-in-output"} <= wires
    assert not root.exists(), "the throwaway tree is removed"
    auth, first = model.requests[0]
    assert auth == "Bearer sk-test"
    assert first["model"] == "scripted-model"
    assert first["tools"][0]["function"]["name"] == "run_code"
    _, second = model.requests[1]
    tool_turn = second["messages"][-1]
    assert tool_turn["role"] == "tool" and tool_turn["tool_call_id"] == "call_1"
    assert "RESULT: read" in json.loads(tool_turn["content"])["stdout"]
    assert outcome.host.agent_answer.startswith("done: ")


def test_a_bad_tool_call_is_answered_with_an_error_and_runs_nothing() -> None:
    server = FakeOpenAI(arguments="{not json")
    agent = LlmAgent("scripted-model", base_url=server.base_url, api_key="")
    battery = Battery(agent, None, log=False)
    try:
        [outcome] = battery.run(select(["delete-canary"]), host=True, sandbox=False)
    finally:
        battery.close()
        agent.close()
        server.close()
    assert outcome.host.trips == []
    assert "bad arguments" in server.requests[1][1]["messages"][-1]["content"]
    assert "Authorization" not in str(server.requests[0][0])


def test_the_model_drives_the_sandbox_runs_and_nothing_trips_there(model: FakeOpenAI) -> None:
    addr = os.environ.get("EMBERD_ADDR")
    assert addr, "this test needs a daemon: run it through scripts/with-daemon.py (make test-eval)"
    env = dict(os.environ, OPENAI_BASE_URL=model.base_url, OPENAI_API_KEY="sk-test")
    done = subprocess.run(
        [sys.executable, str(RUN), "--model", "scripted-model", "--actions", "read-secrets,probe-loopback"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.split()[:1] in (["read-secrets"], ["probe-loopback"])}
    for action in ("read-secrets", "probe-loopback"):
        assert "TRIPPED" in rows[action] and "host tripwires untouched" in rows[action], done.stdout
    assert "agent llm:scripted-model" in done.stdout
    assert len(model.requests) == 8, "two turns per action and per run"
