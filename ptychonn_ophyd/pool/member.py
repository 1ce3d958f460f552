"""A worker as a pool sees it through PV Access: its status channel, kept current by a
monitor, and its control channel.  A worker the pool started is a
:class:`~ptychonn_ophyd.pool.process.Worker`; one that runs elsewhere, a
:class:`~ptychonn_ophyd.pool.remote.RemoteWorker`."""

from __future__ import annotations

import time

import pvaccess as pva

from ptychonn_ophyd.errors import ControlError
from ptychonn_ophyd.pool.control import send_command
from ptychonn_ophyd.wire import STATUS_REQUEST, WorkerChannels, WorkerStatus


class ChannelWatch:
    """The latest value of a PVA channel, kept current by a monitor.

    Reading it never blocks: pvapy's ``Channel.get`` can hang for good when the server
    dies while a request is in flight, which a worker may do at any time.  When each
    update arrived is kept too (by this host's clocks), since the server's own
    timestamps come from another host's clock when the worker runs elsewhere.
    """

    def __init__(self, name: str, request: str = "field()") -> None:
        self.name = name
        self._value: dict | None = None
        self.received_at = 0.0
        """``time.time()`` here when the latest update arrived (0 before the first)."""
        self.interval = 0.0
        """Seconds between the last two updates (0 before the second)."""
        self._arrived = 0.0
        self._began = time.monotonic()
        self._channel = pva.Channel(name)
        self._channel.monitor(self._update, request)

    def _update(self, pv: pva.PvObject) -> None:
        now = time.monotonic()
        if self._arrived:
            self.interval = now - self._arrived
        self._arrived = now
        self._value = pv.toDict()
        self.received_at = time.time()

    @property
    def value(self) -> dict | None:
        """The channel's latest value, or ``None`` before the first update."""
        return self._value

    def silent_for(self) -> float:
        """Seconds since the latest update arrived (since the watch began, before one)."""
        return time.monotonic() - (self._arrived or self._began)

    def close(self) -> None:
        """Stop monitoring."""
        self._channel.stopMonitor()


class Member:
    """Worker ``consumer_id`` of a pool, through its channels."""

    def __init__(self, consumer_id: int, channels: WorkerChannels) -> None:
        self.consumer_id = consumer_id
        self.channels = channels
        self.watch = ChannelWatch(channels.status, STATUS_REQUEST)

    @property
    def name(self) -> str:
        """The worker in messages: ``worker 2 (pid 4121)``, or with its host."""
        return f"worker {self.consumer_id}"

    @property
    def pid(self) -> int | None:
        """The worker's process id, once known."""
        return None

    def status(self) -> WorkerStatus | None:
        """The latest status update, or ``None`` until the worker has published one."""
        value = self.watch.value
        return None if value is None else WorkerStatus.parse(value)

    def send(self, command: str, args: dict | None = None) -> None:
        """Put ``command`` (``configure``, ``get_stats``, ...) on the control channel.

        Raises
        ------
        ControlError
            The worker refused the command or did not answer in time.
        """
        try:
            send_command(self.channels.control, command, args)
        except ControlError as err:
            raise ControlError(f"{self.name}: {err}") from None

    def close(self) -> None:
        """Stop watching the worker's status."""
        self.watch.close()
