"""A virtual screen (Xvfb) for the tests of what a user sees on a workstation."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
from collections.abc import Iterator

import pytest

XVFB_START_S = 30.0


@contextlib.contextmanager
def virtual_screen() -> Iterator[str]:
    """Start Xvfb on a free display number and yield it (``":N"``); stop it after.

    Skips the test, saying what to install, where Xvfb is missing.
    """
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (Debian: apt-get install xvfb)")
    read, write = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], XVFB_START_S)
        number = os.read(read, 32).decode().strip() if ready else ""
        if not number:
            xvfb.kill()
            raise AssertionError(f"Xvfb gave no display in {XVFB_START_S:.0f} s: {xvfb.stderr}")
        yield f":{number}"
    finally:
        os.close(read)
        xvfb.terminate()
        xvfb.wait(timeout=30)


def windows_named(display: str, name: str) -> list[str]:
    """Ids of the visible windows on ``display`` whose name matches ``name``."""
    found = subprocess.run(
        ["xdotool", "search", "--onlyvisible", "--name", name],
        env={**os.environ, "DISPLAY": display},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return found.stdout.split()
