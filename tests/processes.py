"""Subprocesses for the tests: every failure shows the command and its stderr tail; torchrun rendezvous on a port the
OS picks (`--standalone`), never a fixed one; kills at a named phase (`BRIDGETOWER_KILL_AT`, see
bridgetower_gaudi/training/kill_points.py), never at a time."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

from bridgetower_gaudi.training.kill_points import KILL_AT, MARKER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAIL = 4000


def child_environment(**extra: str) -> dict:
    """The environment of a child process: one torch thread, the repository importable."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                PYTHONPATH=ROOT, **extra)  # fmt: skip


def failure_report(done: subprocess.CompletedProcess) -> str:
    def tail(text):
        text = text.decode(errors="replace") if isinstance(text, bytes) else (text or "")
        return text[-TAIL:]

    command = " ".join(map(str, done.args))
    return f"exit {done.returncode}: {command}\n--- stdout tail ---\n{tail(done.stdout)}\n--- stderr tail ---\n" + tail(
        done.stderr
    )


def run_captured(command: list[str], *, timeout: float, env: dict | None = None, **kwargs):
    """Run `command` in its own process group (text mode, output captured). Past `timeout`, or when the test run is
    interrupted, the whole group is killed (torchrun's ranks with it, none left running into later tests); a timeout
    fails with the command and the output tails it had written by then."""
    pipe = subprocess.PIPE
    process = subprocess.Popen(command, env=env or child_environment(), cwd=kwargs.pop("cwd", ROOT), text=True,
                               stdout=pipe, stderr=pipe, start_new_session=True, **kwargs)  # fmt: skip
    with process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except BaseException as error:
            with contextlib.suppress(ProcessLookupError):  # the group may be gone already
                os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            if isinstance(error, subprocess.TimeoutExpired):
                done = subprocess.CompletedProcess(command, f"none: killed after {timeout:g} s", stdout, stderr)
                raise AssertionError(failure_report(done)) from None
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def run_checked(command: list[str], *, timeout: float = 600, env: dict | None = None, expect: int = 0, **kwargs):
    """Run `command` (see run_captured); assert it exited with `expect`, showing its output tails if not."""
    done = run_captured(command, timeout=timeout, env=env, **kwargs)
    assert done.returncode == expect, failure_report(done)
    return done


def torchrun(nproc: int, script: str, *args: str) -> list[str]:
    """A torchrun command line: a single-node rendezvous on a free port the OS picks."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script, *args]


def python_script(script: str, *args: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, script), *args]


def run_killed_at(command: list[str], phase: str, step: int, *, timeout: float = 600, torchrun: bool = False) -> str:
    """Run `command` with `BRIDGETOWER_KILL_AT=phase:step`; assert it SIGKILLed itself there (its marker line, and
    the exit by SIGKILL, or torchrun's exit 1 once a rank died) and return its stderr."""
    done = run_captured(command, timeout=timeout, env=child_environment(**{KILL_AT: f"{phase}:{step}"}))
    assert done.returncode == (1 if torchrun else -signal.SIGKILL), failure_report(done)
    assert f"{MARKER} {phase} step {step}\n" in done.stderr, failure_report(done)
    return done.stderr
