"""Keeping EPICS PV Access on this host, for the demo, tests, benchmarks and examples."""

from __future__ import annotations

import logging
import os
import socket
import struct

log = logging.getLogger(__name__)

LOOPBACK_ENV = {
    "EPICS_PVA_ADDR_LIST": "127.0.0.1",
    "EPICS_PVA_AUTO_ADDR_LIST": "NO",
    "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
}
"""Search and serve on 127.0.0.1 only: nothing is sent to, or heard from, the network."""

LOCAL_MULTICAST_GROUP = "224.0.0.128"
"""The group every pvAccessCPP client and server on a host joins on 127.0.0.1, at the
broadcast port (hard-coded in its ``initializeUDPTransports``)."""

BROADCAST_PORT_VARIABLE = "EPICS_PVA_BROADCAST_PORT"
DEFAULT_BROADCAST_PORT = 5076
"""The UDP port PV Access clients hear searches and beacons on, unless the variable says."""


def use_loopback(force: bool = True) -> None:
    """Set :data:`LOOPBACK_ENV` for this process and the processes it starts.

    Call it before pvaccess is imported. ``force=False`` keeps settings the user made,
    for code (the profile, the examples) that may later be pointed at a real beamline.
    """
    for key, value in LOOPBACK_ENV.items():
        if force:
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)


def announce_server() -> None:
    """Tell every PV Access client on this host, at once, that a server has started.

    A client that lost a channel searches for it at growing intervals (about 0.2, 0.7,
    1.7, 3.5, 7, 15 s after the loss, then every 30 s), so a source back after 10 s is
    heard about 5 s later.  A beacon from a server it has not heard before makes a
    client search again at once (pvAccessCPP's ``BeaconHandler`` calls
    ``newServerDetected``).  On a beamline the IOC's own beacons, broadcast on its
    subnet, do this.  On loopback they cannot: clients listen for beacons on their
    network interfaces and on :data:`LOCAL_MULTICAST_GROUP`, never on 127.0.0.1 or
    127.255.255.255.  So this sends one beacon to that group over the loopback
    interface, where every client on the host hears it and nothing leaves the host.
    A failure is logged, not raised: it only makes the reconnection slower.
    """
    port = int(os.environ.get(BROADCAST_PORT_VARIABLE) or DEFAULT_BROADCAST_PORT)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            loopback = socket.inet_aton("127.0.0.1")
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, loopback)
            sock.sendto(_beacon(), (LOCAL_MULTICAST_GROUP, port))
    except OSError as err:
        log.warning("could not announce the server to this host's PVA clients: %s", err)


def _beacon() -> bytes:
    """A PV Access beacon (pvAccessCPP's ``BeaconEmitter::send``) from a new server.

    A random GUID, and a fresh socket per call, make every beacon a new server's; the
    server address 0.0.0.0 means the sender's, and no port: clients only search again.
    """
    address = bytes(10) + b"\xff\xff" + bytes(4)  # ::ffff:0.0.0.0
    payload = (
        os.urandom(12)  # server GUID
        + struct.pack("<BBh", 0, 0, 0)  # flags, sequence id, change count
        + address
        + struct.pack("<H", 0)  # server port
        + bytes([3])
        + b"tcp"  # protocol, a size-prefixed string
        + b"\xff"  # no server status (a null field)
    )
    # magic, protocol revision 2, flags 0x40: from a server, little-endian; command 0
    return struct.pack("<BBBBI", 0xCA, 2, 0x40, 0, len(payload)) + payload
