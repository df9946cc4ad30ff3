#!/usr/bin/env python3
"""Containment eval: hostile actions an agent might be tricked into, run on the host and in
an emberd sandbox, with tripwires on the host recording what got through.

    python eval/run.py [--actions a,b] [--host-only | --sandbox-only] [--model NAME] [--json FILE]

The daemon is found at EMBERD_ADDR (default 127.0.0.1:7777) and must run on this host.
Without --model a scripted agent runs each action's fixed program; with --model an LLM
behind an OpenAI-compatible endpoint (OPENAI_BASE_URL, OPENAI_API_KEY) gets each action
as a task and a run_code tool. Prints a table; exits 1 when any tripwire trips in a
sandbox run. See docs/eval.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from containment.actions import select
from containment.agents import Agent, LlmAgent, ScriptedAgent
from containment.battery import Battery
from containment.report import as_json, details, table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--actions", help="comma-separated action ids (default: all)")
    side = p.add_mutually_exclusive_group()
    side.add_argument("--host-only", action="store_true")
    side.add_argument("--sandbox-only", action="store_true")
    p.add_argument("--model", help="drive the battery with this model (OpenAI-compatible endpoint)")
    p.add_argument("--max-turns", type=int, default=6)
    p.add_argument("--sandbox-user", choices=["sandbox", "root"], help="the guest user of the sandbox runs (default: the daemon's, sandbox)")
    p.add_argument("--json", help="also write the results as JSON to this file")
    a = p.parse_args()

    agent: Agent = LlmAgent(a.model, max_turns=a.max_turns) if a.model else ScriptedAgent()
    actions = select(a.actions.split(",") if a.actions else None)
    addr = None if a.host_only else os.environ.get("EMBERD_ADDR", "127.0.0.1:7777")
    started = time.monotonic()
    battery = Battery(agent, addr, sandbox_user=a.sandbox_user)
    try:
        outcomes = battery.run(actions, host=not a.sandbox_only, sandbox=not a.host_only)
    finally:
        battery.close()
    took = time.monotonic() - started

    info = battery.daemon.info if battery.daemon else {}
    print(f"containment eval: agent {agent.name}, {len(actions)} actions, {took:.0f} s"
          + (f"; daemon {addr} ({info.get('backend')}, isolation {info.get('isolation', '?')})" if info else "")
          + (f"; sandbox runs as {a.sandbox_user}" if a.sandbox_user and not a.host_only else ""))
    print(table(outcomes))
    print()
    print(details(outcomes))
    if a.json:
        with open(a.json, "w") as f:
            f.write(as_json(outcomes, {"agent": agent.name, "seconds": round(took, 1), "daemon": info}))
    if a.model is None and not a.sandbox_only:
        unproven = [o.action.id for o in outcomes if o.host.ran and not set(o.action.wires) & {t.wire for t in o.host.trips}]
        if unproven:
            print(f"\nnote: on this host the host run of {', '.join(unproven)} did not trip its own wires "
                  "(so their sandbox result proves less): see docs/eval.md")
    failed = [o.action.id for o in outcomes if o.sandbox.trips]
    if failed:
        print(f"\nFAIL: host tripwires tripped in the sandbox run of: {', '.join(failed)}")
        return 1
    print("\nOK: no host tripwire tripped in any sandbox run" if not a.host_only else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
