"""Commands to a consumer's control channel, put from a child process.

pvapy's ``Channel.put`` holds the GIL while it connects its put request. If a monitor
of the same process is then waiting for the GIL to deliver an update from the same
server (a worker's status or results), the two wait for each other for good and the
whole process freezes. A child process has no monitors, and if its put hangs all
the same, it is killed.

Run as ``python -m ptychonn_ophyd.pool.control CHANNEL COMMAND ARGS_JSON TIMEOUT``.
"""

from __future__ import annotations

import json
import subprocess
import sys

from ptychonn_ophyd.errors import ControlError

CONNECT_TIMEOUT = 10.0
"""Seconds the child waits for the control channel to connect (pvapy's default is 3 s,
which a new process talking to a busy worker on a loaded host can exceed)."""
START_ALLOWANCE = 5.0
"""Seconds allowed beyond the connection for the child to start and the put to finish."""


def send_command(
    channel: str,
    command: str,
    args: dict | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> None:
    """Put ``command`` with JSON ``args`` on the control ``channel`` of a consumer.

    Raises
    ------
    ControlError
        The channel did not connect within ``connect_timeout`` s, the put failed, or the
        child did not finish :data:`START_ALLOWANCE` s after that.
    """
    argv = [sys.executable, "-m", __name__, channel, command, json.dumps(args or {})]
    argv.append(str(connect_timeout))
    limit = connect_timeout + START_ALLOWANCE
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise ControlError(f"{channel}: no answer to {command!r} in {limit} s") from None
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise ControlError(f"{channel}: cannot send {command!r}: {reason[0]}")


def _put(channel: str, command: str, args_json: str, connect_timeout: str) -> None:
    import pvaccess as pva

    request = pva.PvObject(
        {"command": pva.STRING, "args": pva.STRING}, {"command": command, "args": args_json}
    )
    control = pva.Channel(channel)
    control.setTimeout(float(connect_timeout))
    control.put(request, "field(command,args)")


if __name__ == "__main__":
    try:
        _put(*sys.argv[1:5])
    except Exception as err:  # one line for the parent, whatever pvapy raised
        sys.exit(f"{type(err).__name__}: {err}")
