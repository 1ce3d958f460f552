"""Control-channel commands, put from a child process so no monitor can freeze the parent."""

from __future__ import annotations

import pytest

from ptychonn_ophyd.streaming.control import ControlError, send_command


def test_command_to_a_missing_channel_fails_naming_the_channel(channel_prefix):
    channel = f"{channel_prefix}:1:control"
    with pytest.raises(ControlError, match=rf"{channel}: cannot send 'configure': .*"):
        send_command(channel, "configure", {"model": "m.onnx"})
