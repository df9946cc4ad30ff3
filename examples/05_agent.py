"""05: an LLM agent whose tools run in a sandbox.

Works with any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp's
server, Ollama...): it sends the conversation and three tools (run_code, write_file,
read_file), runs each tool call in one emberd sandbox, sends the results back, and stops at
the model's final answer.

    OPENAI_BASE_URL=https://api.openai.com/v1 OPENAI_API_KEY=sk-... \\
        python examples/05_agent.py --model gpt-4o-mini "What is the 20th Fibonacci number?"
"""

import argparse
import json
import os
import sys
from typing import Any, Dict, List

import httpx

from emberd import Sandbox

SYSTEM = (
    "You are a careful assistant with a Linux sandbox (Python 3, standard library only). "
    "Use run_code to compute anything rather than guessing; files you write persist "
    "between run_code calls. Give the final answer in one short sentence."
)

TOOLS: List[Dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "run_code", "description": "Run Python 3 code in the sandbox; returns stdout, stderr and the exit code.",
        "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}},
    {"type": "function", "function": {
        "name": "write_file", "description": "Write a text file in the sandbox (absolute path).",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                       "required": ["path", "content"]}}},
    {"type": "function", "function": {
        "name": "read_file", "description": "Read a text file of the sandbox (absolute path).",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}},
]


def run_tool(sb: Sandbox, name: str, args: Dict[str, Any]) -> str:
    """Runs one tool call; the result is what the model reads (errors included)."""
    try:
        if name == "run_code":
            r = sb.exec(args["code"], timeout_ms=30_000)
            return json.dumps({"stdout": r.stdout[-8000:], "stderr": r.stderr[-4000:],
                               "exit_code": r.exit_code, "error": r.error})
        if name == "write_file":
            w = sb.files.write(args["path"], args["content"])
            return json.dumps({"written": w.bytes, "path": w.path})
        if name == "read_file":
            return sb.files.read(args["path"]).decode("utf-8", errors="replace")[-8000:]
        return json.dumps({"error": f"unknown tool {name}"})
    except Exception as e:  # the model sees the failure and can try again
        return json.dumps({"error": f"{type(e).__name__}: {e}"})


def chat(http: httpx.Client, model: str, messages: List[Dict[str, Any]]) -> Dict[str, Any]:
    resp = http.post("/chat/completions", json={"model": model, "messages": messages, "tools": TOOLS})
    resp.raise_for_status()
    message: Dict[str, Any] = resp.json()["choices"][0]["message"]
    return message


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", nargs="?", default="What is the 20th Fibonacci number (F1 = F2 = 1)? Compute it.")
    ap.add_argument("--model", default=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"))
    ap.add_argument("--max-steps", type=int, default=10)
    args = ap.parse_args()

    base = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1").rstrip("/")
    headers = {"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', '')}"}
    messages: List[Dict[str, Any]] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": args.task}]

    with httpx.Client(base_url=base, headers=headers, timeout=120) as http, Sandbox.create() as sb:
        for _ in range(args.max_steps):
            message = chat(http, args.model, messages)
            messages.append(message)
            calls = message.get("tool_calls") or []
            if not calls:
                print("answer:", message.get("content", ""))
                return 0
            for call in calls:
                name = call["function"]["name"]
                call_args = json.loads(call["function"]["arguments"] or "{}")
                print(f"tool {name}({', '.join(f'{k}={v!r}'[:80] for k, v in call_args.items())})")
                result = run_tool(sb, name, call_args)
                print("  ->", result[:200].replace("\n", "\\n"))
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    print("no answer within", args.max_steps, "steps", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
