"""What the tests that start a user's peers (a Redis, RE Manager, ``tiled serve``) share."""

import os
import socket


def free_port() -> int:
    """A TCP port on loopback that nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    """Whether something listens on loopback ``port`` (a fresh socket each try: one that
    was refused cannot connect again)."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def user_environment() -> dict[str, str]:
    """This environment without the Tiled and ptychonn settings of the one running the
    tests, as a new user's shell has it."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("TILED_", "PTYCHONN_"))}
