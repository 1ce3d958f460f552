"""Commands to a consumer's control channel, put from a child process.

pvapy's ``Channel.put`` holds the GIL while it connects its put request. If a monitor
of the same process is then waiting for the GIL to deliver an update from the same
server (a worker's status or results), the two wait for each other for good and the
whole process freezes. A child process has no monitors, and if its put hangs all
the same, it is killed.

Run as ``python -m ptychonn_ophyd.streaming.control CHANNEL COMMAND ARGS_JSON``.
"""

from __future__ import annotations

import json
import subprocess
import sys

PUT_TIMEOUT = 10.0
"""Seconds a command may take, the child's start included, before it is given up."""


class ControlError(RuntimeError):
    """The control channel refused the command or did not answer."""


def send_command(channel: str, command: str, args: dict | None = None) -> None:
    """Put ``command`` with JSON ``args`` on the control ``channel`` of a consumer.

    Raises
    ------
    ControlError
        The put failed, or did not complete within :data:`PUT_TIMEOUT` seconds.
    """
    argv = [sys.executable, "-m", __name__, channel, command, json.dumps(args or {})]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PUT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ControlError(f"{channel}: no answer to {command!r} in {PUT_TIMEOUT} s") from None
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise ControlError(f"{channel}: cannot send {command!r}: {reason[0]}")


def _put(channel: str, command: str, args_json: str) -> None:
    import pvaccess as pva

    request = pva.PvObject(
        {"command": pva.STRING, "args": pva.STRING}, {"command": command, "args": args_json}
    )
    pva.Channel(channel).put(request, "field(command,args)")


if __name__ == "__main__":
    try:
        _put(*sys.argv[1:4])
    except Exception as err:  # one line for the parent, whatever pvapy raised
        sys.exit(f"{type(err).__name__}: {err}")
