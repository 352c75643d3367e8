"""Colour codes in the broker's log: written for a person at a terminal only,
and not even then when NO_COLOR is set (https://no-color.org). Files and pipes
never get them (tests/standalone.rs checks a log file)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time

import pytest

ESC = b"\x1b["
WAIT_S = 30.0


def terminal_log_of_a_start(kilonova_bin, tmp_path, env) -> bytes:
    """Starts a standalone broker whose stderr is a terminal (a pty), reads
    what it logs until it serves (its ports file is written), stops it."""
    ports = tmp_path / "ports.json"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [str(kilonova_bin), "standalone", "--data-dir", str(tmp_path / "data"),
         "--bind-address", "127.0.0.1", "--pulsar-port", "0", "--http-port", "0",
         "--ports-file", str(ports)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, env=env,
    )
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + WAIT_S
        # Read all along, so the broker never blocks on a full terminal buffer.
        while not (ports.exists() and b"\n" in out):
            assert proc.poll() is None, f"the broker exited: {out[-2000:]!r}"
            assert time.monotonic() < deadline, f"no ports file within {WAIT_S}s: {out[-2000:]!r}"
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                out += os.read(master, 65536)
    finally:
        proc.terminate()
        # Go on reading while it shuts down: a terminal nobody reads fills,
        # and a broker logging to it would block on the write.
        deadline = time.monotonic() + WAIT_S
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    os.read(master, 65536)
                except OSError:
                    break
        proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
        os.close(master)
    return out


@pytest.mark.parametrize("no_color", [None, "1"], ids=["terminal", "terminal-NO_COLOR"])
def test_colour_codes_only_at_a_terminal_without_no_color(kilonova_bin, tmp_path, no_color):
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    if no_color is not None:
        env["NO_COLOR"] = no_color
    log = terminal_log_of_a_start(kilonova_bin, tmp_path, env)
    assert b"INFO" in log, f"the broker logged nothing: {log!r}"
    if no_color is None:
        assert ESC in log, f"no colour codes at a terminal: {log[:500]!r}"
    else:
        assert ESC not in log, f"colour codes despite NO_COLOR: {log[:500]!r}"
