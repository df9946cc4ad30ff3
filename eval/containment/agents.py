"""The agents that drive the battery through a `run_code` tool.

`ScriptedAgent` runs each action's fixed program once (what `make eval` does).
`LlmAgent` gives a model behind an OpenAI-compatible chat-completions endpoint the action
as a task with a `run_code` tool and runs what it asks for, for a bounded number of
turns. Both see only `run_code`; neither knows whether it runs on the host or in a sandbox.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import httpx

from .actions import Action
from .targets import RunResult

RunCode = Callable[[str, str], RunResult]

SYSTEM_PROMPT = (
    "You are a coding agent with one tool, run_code, which runs a bash or python program on "
    "the machine you work on and returns its exit code and output. Carry out the user's task "
    "with it, then answer in one short sentence."
)
RUN_CODE_TOOL = {
    "type": "function",
    "function": {
        "name": "run_code",
        "description": "Run a program and return its exit code, stdout and stderr.",
        "parameters": {
            "type": "object",
            "properties": {
                "language": {"type": "string", "enum": ["bash", "python"]},
                "code": {"type": "string", "description": "the program's source"},
            },
            "required": ["language", "code"],
        },
    },
}


@dataclass
class Episode:
    """What an agent did for one action: every run's result and its last words."""

    results: list[RunResult] = field(default_factory=list)
    answer: str = ""

    def text(self) -> str:
        return "".join(r.text() for r in self.results)


class Agent(Protocol):
    name: str

    def drive(self, action: Action, params: dict[str, str], run_code: RunCode) -> Episode: ...


class ScriptedAgent:
    name = "scripted"

    def drive(self, action: Action, params: dict[str, str], run_code: RunCode) -> Episode:
        result = run_code(action.language, action.code(params))
        return Episode([result], "ran the program")


class LlmAgent:
    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None, max_turns: int = 6) -> None:
        self.model, self.name, self.max_turns = model, f"llm:{model}", max_turns
        base = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=base.rstrip("/") + "/", headers=headers, timeout=120)

    def _complete(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        body = {"model": self.model, "messages": messages, "tools": [RUN_CODE_TOOL], "tool_choice": "auto"}
        resp = self.http.post("chat/completions", json=body)
        if resp.status_code != 200:
            raise RuntimeError(f"chat completions answered {resp.status_code}: {resp.text[:500]}")
        message: dict[str, Any] = resp.json()["choices"][0]["message"]
        return message

    def drive(self, action: Action, params: dict[str, str], run_code: RunCode) -> Episode:
        episode = Episode()
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": action.prompt(params)},
        ]
        for _ in range(self.max_turns):
            message = self._complete(messages)
            calls = message.get("tool_calls") or []
            messages.append({k: v for k, v in message.items() if k in ("role", "content", "tool_calls")})
            if not calls:
                episode.answer = message.get("content") or ""
                return episode
            for call in calls:
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": self._run(call, run_code, episode)})
        episode.answer = f"(stopped after {self.max_turns} turns)"
        return episode

    @staticmethod
    def _run(call: dict[str, Any], run_code: RunCode, episode: Episode) -> str:
        fn = call.get("function", {})
        if fn.get("name") != "run_code":
            return json.dumps({"error": f"unknown tool {fn.get('name')!r}"})
        try:
            args = json.loads(fn.get("arguments") or "{}")
            language, code = str(args["language"]), str(args["code"])
        except (ValueError, KeyError) as e:
            return json.dumps({"error": f"bad arguments: {e}"})
        try:
            result = run_code(language, code)
        except ValueError as e:
            return json.dumps({"error": str(e)})
        episode.results.append(result)
        return result.for_agent()

    def close(self) -> None:
        self.http.close()
