"""A scripted OpenAI-compatible chat-completions server on loopback, for testing 05.

    python examples/support/fake_llm.py [--port 0]

Prints ``OPENAI_BASE_URL=http://127.0.0.1:PORT/v1`` once it listens. It answers
``POST /v1/chat/completions`` by how many tool results the conversation already holds:
0: call write_file (a Fibonacci program); 1: call run_code (run that file);
2: a final answer quoting what run_code printed. So the answer is only right when the
agent really ran the tools in a sandbox. It checks the request's shape as it goes and
answers 400 to a malformed one.
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Dict, List

PROGRAM = (
    "def fib(n):\n"
    "    a, b = 0, 1\n"
    "    for _ in range(n):\n"
    "        a, b = b, a + b\n"
    "    return a\n"
    "\n"
    "print(fib(20))\n"
)


def tool_call(n: int, name: str, args: Dict[str, Any]) -> Dict[str, Any]:
    return {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def reply(messages: List[Dict[str, Any]]) -> Dict[str, Any]:
    tool_results = [m for m in messages if m.get("role") == "tool"]
    if len(tool_results) == 0:
        calls = [tool_call(1, "write_file", {"path": "/home/sandbox/fib.py", "content": PROGRAM})]
        return {"role": "assistant", "content": None, "tool_calls": calls}
    if len(tool_results) == 1:
        calls = [tool_call(2, "run_code", {"code": "exec(open('/home/sandbox/fib.py').read())"})]
        return {"role": "assistant", "content": None, "tool_calls": calls}
    ran = json.loads(tool_results[-1]["content"])
    return {"role": "assistant", "content": f"The 20th Fibonacci number is {ran['stdout'].strip()}."}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self.answer(404, {"error": {"message": "no such route"}})
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        names = {t["function"]["name"] for t in body.get("tools", [])}
        if not body.get("model") or not {"run_code", "read_file", "write_file"} <= names:
            return self.answer(400, {"error": {"message": "expected a model and the three tools"}})
        message = reply(body["messages"])
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        self.answer(200, {"id": "chatcmpl-fake", "object": "chat.completion", "model": body["model"],
                          "choices": [{"index": 0, "message": message, "finish_reason": finish}]})

    def answer(self, status: int, body: Dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write("fake_llm: " + format % args + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    port = ap.parse_args().port
    server = HTTPServer(("127.0.0.1", port), Handler)
    print(f"OPENAI_BASE_URL=http://127.0.0.1:{server.server_address[1]}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
