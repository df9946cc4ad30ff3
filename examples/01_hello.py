"""01: create a sandbox, run code in it, delete it.

    EMBERD_ADDR=127.0.0.1:7777 python examples/01_hello.py
"""

from emberd import Sandbox

# The with block deletes the sandbox (its VM and files) when it ends, even on an error.
with Sandbox.create(pack="python") as sb:
    info = sb.info()
    print(f"sandbox {sb.id}: pack {info.pack}, made by {info.boot_path}, {info.memory_mib} MiB")

    result = sb.exec("import platform\nprint(6 * 7)\nprint(platform.python_version())")
    print("stdout:", result.stdout.strip().replace("\n", " | "))
    print("exit code:", result.exit_code, "in", result.duration_ms, "ms")

    # Sandboxes can be kept: Sandbox.connect(id) gets a new handle on a running one.
    again = Sandbox.connect(sb.id, client=sb.client)
    print("same sandbox:", again.exec("print('still here')").stdout.strip())

print("deleted:", sb.id)
