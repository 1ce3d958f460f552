"""Log lines for per-frame events, at most one per kind every few seconds."""

from __future__ import annotations

import logging
from time import monotonic


class Throttle:
    """Lets one warning per key through every ``period`` seconds and counts the rest.

    The next line that gets through says how many were held back since the last one.
    """

    def __init__(self, logger: logging.Logger, period: float = 10.0) -> None:
        self._logger = logger
        self._period = period
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, message: str, exc_info: bool = False) -> None:
        """Log ``message`` unless a line for ``key`` went out less than ``period`` ago."""
        now = monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._period:
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            message += f" ({held} more like it since the last report)"
        self._logger.warning(message, exc_info=exc_info)
