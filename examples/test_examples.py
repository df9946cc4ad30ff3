"""Runs every example against the daemon at EMBERD_ADDR and checks what it printed.

    scripts/with-daemon.py -- target/pyenv/bin/pytest examples/test_examples.py
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

HERE = Path(__file__).parent


@pytest.fixture(scope="session", autouse=True)
def daemon() -> None:
    if not os.environ.get("EMBERD_ADDR"):
        pytest.fail("EMBERD_ADDR is not set: run the examples through scripts/with-daemon.py")


def run(name: str, *args: str, env: Dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, str(HERE / name), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_01_hello() -> None:
    out = run("01_hello.py")
    assert "stdout: 42 | 3." in out and "exit code: 0" in out and "same sandbox: still here" in out


def test_02_shell() -> None:
    out = run("02_shell.py")
    assert "sum of squares: 55" in out and "via the files API: row 5 25" in out
    assert "ls exited 2" in out and "ok as root: 0" in out


def test_03_files() -> None:
    out = run("03_files.py")
    assert "run 3: seen ['alpha', 'beta', 'gamma']" in out
    assert "NameError" in out and "'runs': 3" in out


def test_04_errors() -> None:
    out = run("04_errors.py")
    for expected in ("exit code 3, ok=False", "ZeroDivisionError", "error='execution timed out', output kept: 'working...'",
                     "killed by signal 9", "FileNotFound: status 404", "SandboxNotFound after delete",
                     'BadRequest: \'unknown language pack: "cobol"\'', "every SDK error is an EmberdError"):
        assert expected in out, expected


@pytest.fixture
def fake_llm() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, str(HERE / "support" / "fake_llm.py")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("OPENAI_BASE_URL="), line
        yield line.split("=", 1)[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_05_agent_uses_the_sandbox(fake_llm: str) -> None:
    out = run("05_agent.py", "--model", "scripted", env={"OPENAI_BASE_URL": fake_llm, "OPENAI_API_KEY": "test"})
    # The scripted model writes a program, runs it, and quotes what it printed: the answer
    # is only right if both tool calls ran in the sandbox.
    assert "tool write_file(path='/home/sandbox/fib.py'" in out
    assert '"stdout": "6765\\n"' in out
    assert "answer: The 20th Fibonacci number is 6765." in out


def test_06_streaming_server() -> None:
    out = run("06_streaming_server.py")
    assert "  | 3...\n  | 2...\n  | 1...\n  | liftoff\n" in out
    assert "[server stdout] Serving HTTP on 127.0.0.1 port 8000" in out
    assert '"GET /hello.txt HTTP/1.1" 200' in out and "/hello.txt 200 23 bytes" in out and "/missing 404" in out
    assert "server ended: killed, signal 15" in out


def test_07_data_analysis(tmp_path: Path) -> None:
    out = run("07_data_analysis.py", "--out", str(tmp_path))
    assert "kept 537" in out
    stats = json.loads((tmp_path / "stats.json").read_text())
    rows: List[Dict[str, str]] = [r for r in csv.DictReader(open(HERE / "data" / "weather.csv")) if r["temp_c"]]
    for city in ("Lisbon", "Nairobi", "Oslo"):
        temps = [float(r["temp_c"]) for r in rows if r["city"] == city]
        assert stats[city]["days"] == len(temps)
        assert stats[city]["mean_c"] == round(statistics.mean(temps), 2)
        assert stats[city]["max_c"] == max(temps)
    svg = ET.parse(tmp_path / "chart.svg").getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    assert len(svg.findall("{http://www.w3.org/2000/svg}polyline")) == 3
