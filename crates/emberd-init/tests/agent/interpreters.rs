//! One table of cases each interpreter must pass alike whether an exec
//! starts it afresh (cold) or takes the pre-started one (warm): the fork
//! server's child and the spare node must behave like a fresh interpreter.

use std::path::Path;

use emberd_proto::v1::agent_client::AgentClient;
use emberd_proto::v1::exec_input;
use tonic::transport::Channel;

use crate::support::{
    assert_gone, close_stdin, marker, run_code, run_started, Agent, Language, Outcome, Start,
};

/// What one exec must show.
#[derive(Debug)]
enum Check {
    /// Standard output is exactly this; `{work}` stands for the working directory.
    Stdout(&'static str),
    /// Standard error is exactly this.
    Stderr(&'static str),
    StderrStarts(&'static str),
    StderrHas(&'static str),
    StderrLacks(&'static str),
    ExitCode(i32),
    Signal(i32),
    TimedOut,
}

use Check::*;

/// A program and what it must show. `{marker}` in the code stands for a
/// word that names the processes it leaves; once the exec has ended none of
/// them may be left.
struct Program {
    code: &'static str,
    checks: &'static [Check],
}

struct Case {
    what: &'static str,
    python: Program,
    node: Program,
    /// Written to stdin, which is then closed (unless `signal` is set).
    stdin: &'static [u8],
    /// Sent at once, instead of closing stdin.
    signal: Option<i32>,
    /// 0 for none.
    timeout_ms: u64,
}

/// The fields most cases leave alone.
const DEFAULTS: Case = Case {
    what: "",
    python: Program {
        code: "",
        checks: &[],
    },
    node: Program {
        code: "",
        checks: &[],
    },
    stdin: b"",
    signal: None,
    timeout_ms: 0,
};

/// Every case runs in `/work` with `GREETING=hi` in its environment.
const CASES: &[Case] = &[
    Case {
        what: "stdout and stderr are kept apart",
        python: Program {
            code: "import sys\nprint(6*7)\nprint('e', file=sys.stderr)",
            checks: &[Stdout("42\n"), Stderr("e\n"), ExitCode(0)],
        },
        node: Program {
            code: "console.log(6*7); console.error('e')",
            checks: &[Stdout("42\n"), Stderr("e\n"), ExitCode(0)],
        },
        ..DEFAULTS
    },
    Case {
        what: "an exit code set by exiting",
        python: Program {
            code: "import sys\nprint('hi')\nsys.exit(42)",
            checks: &[Stdout("hi\n"), ExitCode(42)],
        },
        node: Program {
            code: "console.log('hi'); process.exit(42)",
            checks: &[Stdout("hi\n"), ExitCode(42)],
        },
        ..DEFAULTS
    },
    Case {
        what: "an exit code left for the end",
        python: Program {
            code: "exit(7)",
            checks: &[ExitCode(7)],
        },
        node: Program {
            code: "process.exitCode = 7",
            checks: &[ExitCode(7)],
        },
        ..DEFAULTS
    },
    Case {
        what: "a syntax error",
        python: Program {
            code: "print('unclosed'",
            checks: &[ExitCode(1), StderrHas("SyntaxError")],
        },
        node: Program {
            code: "console.log('unclosed'",
            checks: &[ExitCode(1), StderrHas("SyntaxError")],
        },
        ..DEFAULTS
    },
    Case {
        what: "an uncaught exception, reported as the interpreter reports it",
        python: Program {
            code: "def f():\n    raise ValueError('boom')\nf()",
            checks: &[
                ExitCode(1),
                StderrStarts("Traceback (most recent call last):"),
                StderrHas("ValueError: boom"),
                StderrLacks("forkserver"),
            ],
        },
        node: Program {
            code: "function f() { throw new Error('boom') }\nf()",
            checks: &[ExitCode(1), StderrHas("Error: boom")],
        },
        ..DEFAULTS
    },
    Case {
        what: "work left for the end runs before the process exits",
        python: Program {
            code: "import atexit\natexit.register(print, 'later')\nprint('now')",
            checks: &[Stdout("now\nlater\n"), ExitCode(0)],
        },
        node: Program {
            code: "setTimeout(() => console.log('later'), 50); console.log('now')",
            checks: &[Stdout("now\nlater\n"), ExitCode(0)],
        },
        ..DEFAULTS
    },
    Case {
        what: "stdin, the main module, argv, cwd and environment",
        python: Program {
            code: "import os, sys\n\
                   print(__name__, sys.argv[0].endswith('.py'), os.getcwd(), \
                   os.environ['GREETING'], 'PATH' in os.environ, sys.stdin.read())",
            checks: &[Stdout("__main__ True {work} hi True in\n"), ExitCode(0)],
        },
        node: Program {
            code: "let input = '';\n\
                   process.stdin.on('data', d => input += d);\n\
                   process.stdin.on('end', () => console.log(require.main === module, \
                   process.argv[1].endsWith('.js'), process.cwd(), process.env.GREETING, \
                   process.env.PATH !== undefined, input));",
            checks: &[Stdout("true true {work} hi true in\n"), ExitCode(0)],
        },
        stdin: b"in",
        ..DEFAULTS
    },
    Case {
        what: "a timeout kills the process and what it started, and keeps its output",
        python: Program {
            code: "import subprocess, time\nprint('before', flush=True)\n\
                   subprocess.Popen(['sleep', '{marker}'])\ntime.sleep(100)",
            checks: &[TimedOut, Signal(9), ExitCode(128 + 9), Stdout("before\n")],
        },
        node: Program {
            code: "require('child_process').spawn('sleep', ['{marker}'], {stdio: 'ignore'});\n\
                   console.log('before'); setInterval(() => {}, 1000)",
            checks: &[TimedOut, Signal(9), ExitCode(128 + 9), Stdout("before\n")],
        },
        // The program must print before the timeout fires: long enough for
        // a cold interpreter to start on a loaded machine.
        timeout_ms: 2000,
        ..DEFAULTS
    },
    Case {
        what: "signals reach it",
        python: Program {
            code: "import time\nprint('ready', flush=True)\ntime.sleep(30)",
            checks: &[Signal(15), ExitCode(128 + 15)],
        },
        node: Program {
            code: "console.log('ready'); setInterval(() => {}, 1000)",
            checks: &[Signal(15), ExitCode(128 + 15)],
        },
        signal: Some(15),
        ..DEFAULTS
    },
];

impl Check {
    fn holds(&self, out: &Outcome, work: &Path) -> bool {
        let stderr = String::from_utf8_lossy(&out.stderr);
        match *self {
            Stdout(text) => {
                out.stdout
                    == text
                        .replace("{work}", &work.display().to_string())
                        .as_bytes()
            }
            Stderr(text) => stderr == text,
            StderrStarts(text) => stderr.starts_with(text),
            StderrHas(text) => stderr.contains(text),
            StderrLacks(text) => !stderr.contains(text),
            ExitCode(code) => out.exit.exit_code == code,
            Signal(signal) => out.exit.signal == signal,
            TimedOut => out.exit.timed_out,
        }
    }
}

/// Runs every case of the table, then the cases that take several execs or
/// only concern the pre-started interpreter.
async fn passes_every_case(language: Language, start: Start, tag: u32) {
    let agent = Agent::start();
    std::fs::create_dir(agent.root.path().join("work")).unwrap();
    let work = agent.root.path().join("work").canonicalize().unwrap();
    let mut client = agent.agent().await;
    let marker = marker(tag);
    for case in CASES {
        let program = match language {
            Language::Python => &case.python,
            Language::Node => &case.node,
        };
        let mut exec = language.exec(start, &program.code.replace("{marker}", &marker));
        exec.cwd = "/work".into();
        exec.env.insert("GREETING".into(), "hi".into());
        exec.timeout_ms = case.timeout_ms;
        let inputs = match case.signal {
            Some(signal) => vec![exec_input::Kind::Signal(signal)],
            None if case.stdin.is_empty() => vec![close_stdin()],
            None => vec![exec_input::Kind::Stdin(case.stdin.to_vec()), close_stdin()],
        };
        let out = run_started(&mut client, language, start, exec, inputs).await;
        for check in program.checks {
            assert!(
                check.holds(&out, &work),
                "{start:?} {language:?}, {}: {check:?} fails: {out:?}",
                case.what
            );
        }
        if program.code.contains("{marker}") {
            assert_gone(&marker).await;
        }
    }
    memory_is_not_shared_between_execs(&mut client, language, start).await;
    random_state_is_fresh_per_exec(&mut client, language, start).await;
    if start == Start::Warm {
        startup_variables_get_a_fresh_interpreter(&mut client, language).await;
    }
}

async fn memory_is_not_shared_between_execs(
    client: &mut AgentClient<Channel>,
    language: Language,
    start: Start,
) {
    let (set, probe, expected) = match language {
        Language::Python => (
            "global_marker = 1",
            "print('global_marker' in globals())",
            "False\n",
        ),
        Language::Node => (
            "globalThis.marker = 1",
            "console.log('marker' in globalThis)",
            "false\n",
        ),
    };
    let out = run_code(client, language, start, set).await;
    assert_eq!(out.exit.exit_code, 0, "{out:?}");
    let out = run_code(client, language, start, probe).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        expected,
        "{start:?} {language:?}"
    );
}

async fn random_state_is_fresh_per_exec(
    client: &mut AgentClient<Channel>,
    language: Language,
    start: Start,
) {
    let code = match language {
        Language::Python => "import random; print(random.getrandbits(64))",
        Language::Node => "console.log(Math.random())",
    };
    let mut seen = Vec::new();
    for _ in 0..2 {
        let out = run_code(client, language, start, code).await;
        assert_eq!(out.exit.exit_code, 0, "{out:?}");
        seen.push(out.stdout);
    }
    assert_ne!(seen[0], seen[1], "{start:?} {language:?}");
}

/// A variable the interpreter reads as it starts, which the pre-started one
/// has done already: an exec that sets one gets a fresh interpreter even
/// though it asks for the warm one.
async fn startup_variables_get_a_fresh_interpreter(
    client: &mut AgentClient<Channel>,
    language: Language,
) {
    let (variable, value, code) = match language {
        Language::Python => (
            "PYTHONHASHSEED",
            "0",
            "import os; print(os.environ['PYTHONHASHSEED'])",
        ),
        Language::Node => (
            "NODE_OPTIONS",
            "--no-warnings",
            "console.log(process.env.NODE_OPTIONS)",
        ),
    };
    let mut exec = language.exec(Start::Warm, code);
    exec.env.insert(variable.into(), value.into());
    let out = run_started(client, language, Start::Cold, exec, vec![close_stdin()]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{value}\n"),
        "{language:?}"
    );
}

#[tokio::test]
async fn a_cold_python_passes_every_case() {
    passes_every_case(Language::Python, Start::Cold, 10).await;
}

#[tokio::test]
async fn the_warm_python_passes_every_case() {
    passes_every_case(Language::Python, Start::Warm, 11).await;
}

#[tokio::test]
async fn a_cold_node_passes_every_case() {
    passes_every_case(Language::Node, Start::Cold, 12).await;
}

#[tokio::test]
async fn the_warm_node_passes_every_case() {
    passes_every_case(Language::Node, Start::Warm, 13).await;
}
