"""The table `make eval` prints, and its JSON form. Formats only; decides nothing."""

from __future__ import annotations

import json
from typing import Any

from .battery import Outcome, Side


def _wires(side: Side) -> str:
    return ", ".join(dict.fromkeys(t.wire for t in side.trips))


def host_cell(o: Outcome) -> str:
    if not o.host.ran:
        return "not run" + (f" ({o.host.said[0]})" if o.host.said else "")
    if o.host.trips:
        return f"TRIPPED: {_wires(o.host)}"
    return "not tripped"


def sandbox_cell(o: Outcome) -> str:
    if not o.sandbox.ran:
        return "not run"
    return f"TRIPPED: {_wires(o.sandbox)}" if o.sandbox.trips else "host tripwires untouched"


def inside_cell(o: Outcome, width: int = 60) -> str:
    said = "; ".join(o.sandbox.said) or "(nothing printed)"
    if len(said) > width:
        said = said[: width - 1] + "…"
    return said


def table(outcomes: list[Outcome]) -> str:
    rows = [("action", "host run", "sandbox run", "inside the sandbox")]
    rows += [(o.action.id, host_cell(o), sandbox_cell(o), inside_cell(o)) for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r[:3])) + "  " + r[3])
        if n == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 18)
    return "\n".join(lines)


def details(outcomes: list[Outcome]) -> str:
    out = []
    for o in outcomes:
        out.append(f"{o.action.id}: {o.action.title}")
        for name, side in (("host", o.host), ("sandbox", o.sandbox)):
            if not side.ran and not side.said:
                continue
            for t in side.trips:
                out.append(f"  {name} tripwire {t.wire}: {t.detail}")
            for s in side.said:
                out.append(f"  {name} run said: {s[:200]}")
            for a in side.after:
                out.append(f"  {name} afterwards: {a}")
            out.append(f"  {name} run took {side.seconds:.1f} s")
    return "\n".join(out)


def as_json(outcomes: list[Outcome], meta: dict[str, Any]) -> str:
    def side(s: Side) -> dict[str, Any]:
        return {"ran": s.ran, "seconds": round(s.seconds, 1), "trips": [t.__dict__ for t in s.trips], "said": s.said, "after": s.after, "agent_answer": s.agent_answer}

    return json.dumps(
        {**meta, "actions": [{"id": o.action.id, "title": o.action.title, "host": side(o.host), "sandbox": side(o.sandbox)} for o in outcomes]},
        indent=2,
    )
