"""Control-channel commands, put from a child process so no monitor can freeze the parent."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ptychonn_ophyd.errors import ControlError
from ptychonn_ophyd.pool.control import send_command

pytestmark = pytest.mark.processes

BUSY_SERVER = """
import os, sys, time
import pvaccess as pva

counter, control = sys.argv[1:3]
parent = os.getppid()
server = pva.PvaServer()
server.addRecord(counter, pva.PvObject({"value": pva.INT}, {"value": 0}), None)
server.addRecord(control, pva.PvObject({"command": pva.STRING, "args": pva.STRING}), None)
server.start()
print("ready", flush=True)
count = 0
while os.getppid() == parent:
    count += 1
    server.update(counter, pva.PvObject({"value": pva.INT}, {"value": count}))
    time.sleep(0.0005)
"""

MONITORING_CLIENT = """
import faulthandler, json, os, sys, time
import pvaccess as pva
from ptychonn_ophyd.pool.control import send_command

faulthandler.dump_traceback_later(30, exit=True)
counter, control = sys.argv[1:3]
updates, commands = [], []
watching = [pva.Channel(counter), pva.Channel(control)]
watching[0].monitor(lambda pv: updates.append(pv["value"]), "field(value)")
watching[1].monitor(lambda pv: commands.append(pv.toDict()), "field(command,args)")
while len(updates) < 50:
    time.sleep(0.01)
for step in range(12):
    send_command(control, "configure", {"step": step})
while not commands or json.loads(commands[-1]["args"] or "{}") != {"step": 11}:
    time.sleep(0.01)
print(json.dumps({"updates": len(updates), "last": commands[-1]}), flush=True)
os._exit(0)  # without stopping the monitors: pvapy aborts if they run at interpreter exit
"""


@pytest.fixture
def busy_server(channel_prefix):
    """A server in another process updating ``:counter`` at ~2 kHz, beside ``:control``."""
    counter, control = f"{channel_prefix}:counter", f"{channel_prefix}:control"
    server = subprocess.Popen(
        [sys.executable, "-c", BUSY_SERVER, counter, control], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout.readline().strip() == "ready"
        yield counter, control
    finally:
        server.kill()
        server.wait(10)


def test_commands_do_not_freeze_a_process_monitoring_the_same_server(busy_server):
    # In a child process: a GIL deadlock is out of pytest-timeout's reach, and the
    # child's faulthandler prints its stacks and exits if it freezes.
    client = subprocess.run(
        [sys.executable, "-c", MONITORING_CLIENT, *busy_server],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert client.returncode == 0, client.stderr
    seen = json.loads(client.stdout)
    assert seen["updates"] > 50
    assert seen["last"] == {"command": "configure", "args": json.dumps({"step": 11})}


def test_command_to_a_missing_channel_fails_naming_the_channel(channel_prefix):
    channel = f"{channel_prefix}:1:control"
    with pytest.raises(ControlError, match=rf"{channel}: cannot send 'configure': .*"):
        send_command(channel, "configure", {"model": "m.onnx"}, connect_timeout=1.0)
