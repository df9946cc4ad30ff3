"""A scripted OpenAI-compatible chat-completions server on loopback, for the LLM mode's tests.

To a user turn it answers with one `run_code` call whose code is the first fenced block of
the prompt (what a compliant model would do); to a tool result it answers with text
quoting the result. `arguments` replaces the call's arguments when set (to test bad calls).
Records every request body and its Authorization header.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)


class FakeOpenAI:
    def __init__(self, arguments: str | None = None) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.arguments = arguments
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.headers.get("Authorization", ""), body))
                if self.path != "/v1/chat/completions":
                    self.send_error(404)
                    return
                data = json.dumps({"choices": [{"index": 0, "message": outer.reply(body["messages"])}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reply(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        last = messages[-1]
        if last["role"] == "tool":
            return {"role": "assistant", "content": "done: " + last["content"][:200]}
        match = FENCE.search(last["content"])
        assert match, "the prompt carries the program in a fenced block"
        args = self.arguments or json.dumps({"language": match.group(1), "code": match.group(2)})
        call = {"id": f"call_{len(self.requests)}", "type": "function", "function": {"name": "run_code", "arguments": args}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
