"""Named kill points, for tests of what a crash leaves behind: `BRIDGETOWER_KILL_AT=PHASE[:STEP]` makes the trainer
SIGKILL its own process when it reaches PHASE (at optimizer step STEP, or the first time without one), after writing
one line to stderr that says where. A test then knows the kill landed where it meant, not wherever a clock put it.

Phases: `mid_step` (gradients computed, the optimizer not yet stepped), `mid_save` (a checkpoint's files written in
its staging folder, not yet renamed into place), `mid_rotation` (`--save_total_limit`: an old checkpoint renamed out
of the checkpoint-* namespace, not yet deleted), `mid_final_save` (the final model: some files moved into place,
config.json not yet). Unset, nothing happens."""

from __future__ import annotations

import os
import signal

KILL_AT = "BRIDGETOWER_KILL_AT"
PHASES = ("mid_step", "mid_save", "mid_rotation", "mid_final_save")
MARKER = "BRIDGETOWER_KILL_AT: SIGKILL at"  # the stderr line: f"{MARKER} {phase} step {step}"


def wanted_kill() -> tuple[str, int | None] | None:
    """(phase, step or None) from the environment, or None; a malformed value is refused naming the phases."""
    value = os.environ.get(KILL_AT, "")
    if not value:
        return None
    phase, _, step = value.partition(":")
    if phase not in PHASES or (step and not step.isdigit()):
        raise ValueError(f"{KILL_AT}={value!r}: use PHASE or PHASE:STEP with PHASE one of {', '.join(PHASES)}.")
    return phase, int(step) if step else None


def kill_point(phase: str, step: int) -> None:
    """SIGKILL this process here if `BRIDGETOWER_KILL_AT` names this phase (and step)."""
    wanted = wanted_kill()
    if wanted is None or wanted[0] != phase or wanted[1] not in (None, step):
        return
    os.write(2, f"\n{MARKER} {phase} step {step}\n".encode())  # unbuffered: it is out before the kill
    os.kill(os.getpid(), signal.SIGKILL)
