"""03: files persist between execs (interpreter state does not).

Each exec is a fresh interpreter process: variables and imports are gone when it ends.
What lasts for the life of the sandbox is its filesystem, so keep state in files.

    python examples/03_files.py
"""

import io
import json

from emberd import Sandbox

HELPER = '''
import json, os

STATE = "/home/sandbox/state.json"

def load():
    return json.load(open(STATE)) if os.path.exists(STATE) else {"runs": 0, "seen": []}

def save(state):
    json.dump(state, open(STATE, "w"))
'''

STEP = '''
import sys
sys.path.insert(0, "/home/sandbox/lib")
import helper

state = helper.load()
state["runs"] += 1
state["seen"].append(WORD)
helper.save(state)
print(f"run {state['runs']}: seen {state['seen']}")
'''

with Sandbox.create() as sb:
    # Upload a module; later execs import it from there.
    sb.files.write("/home/sandbox/lib/helper.py", HELPER)

    for word in ("alpha", "beta", "gamma"):
        print(sb.exec(f"WORD = {word!r}\n" + STEP).stdout, end="")

    # A variable of an earlier exec is gone; its files are not.
    r = sb.exec("print(WORD)")
    print("a variable from an earlier exec:", r.stderr.strip().splitlines()[-1])

    for entry in sb.files.list("/home/sandbox"):
        print(f"  {entry.type:4} {entry.size:6} {entry.path}")

    # Download the state file (streamed into any binary file object).
    buf = io.BytesIO()
    sb.files.download("/home/sandbox/state.json", buf)
    print("downloaded state:", json.loads(buf.getvalue()))
