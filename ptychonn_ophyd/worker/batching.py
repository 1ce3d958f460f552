"""Preallocated batch buffers between the PVA monitor thread and the inference thread."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from time import perf_counter

import numpy as np


class BatchQueue:
    """A bounded queue of frames, stored as model input in whole-batch buffers.

    The monitor thread :meth:`put` s each frame into the next free slot of the open
    buffer; the inference thread :meth:`take` s full buffers at once and a partial one
    when its first frame has waited ``timeout`` seconds, then :meth:`release` s it.
    Nothing is allocated per frame.

    Parameters
    ----------
    n_buffers, batch_size
        The queue holds ``n_buffers * batch_size`` frames.
    frame_shape
        ``(H, W)`` of the model input.
    timeout
        Longest wait, in seconds, of the first frame of a partial batch.
    fill
        ``fill(frame, slot)`` writes model input for ``frame`` into ``slot``; it may
        raise, in which case nothing is queued.
    """

    def __init__(
        self,
        n_buffers: int,
        batch_size: int,
        frame_shape: tuple[int, int],
        timeout: float,
        fill: Callable[[np.ndarray, np.ndarray], None],
    ) -> None:
        self.frames = np.empty((n_buffers, batch_size, *frame_shape), np.float32)
        self.received_at = np.zeros((n_buffers, batch_size))
        self.meta: list[list[object]] = [[None] * batch_size for _ in range(n_buffers)]
        self.batch_size = batch_size
        self.timeout = timeout
        self._fill = fill
        self._free = deque(range(n_buffers))
        self._full: deque[tuple[int, int]] = deque()
        self._open = -1
        self._count = 0
        self._opened_at = 0.0
        self._closed = False
        self._cond = threading.Condition(threading.Lock())

    @property
    def capacity(self) -> int:
        """Frames the queue holds when every buffer is full."""
        return self.frames.shape[0] * self.batch_size

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def put(self, frame: np.ndarray, meta: object, received_at: float) -> bool:
        """Queue ``frame`` with ``meta``; ``False`` when every buffer is full or closed."""
        with self._cond:
            if self._closed:
                return False
            if self._open < 0:
                if not self._free:
                    return False
                self._open = self._free.pop()
            b, i = self._open, self._count
            self._fill(frame, self.frames[b, i])
            self.meta[b][i] = meta
            self.received_at[b, i] = received_at
            self._count = i + 1
            if i == 0:
                self._opened_at = received_at
                self._cond.notify()
            if self._count == self.batch_size:
                self._full.append((b, self._count))
                self._open, self._count = -1, 0
                self._cond.notify()
        return True

    def take(self) -> tuple[int, int] | None:
        """Wait for the next batch: ``(buffer, n_frames)``, or ``None`` once closed and empty."""
        with self._cond:
            while True:
                if self._full:
                    return self._full.popleft()
                if self._count:
                    wait = self._opened_at + self.timeout - perf_counter()
                    if wait <= 0 or self._closed:
                        batch = self._open, self._count
                        self._open, self._count = -1, 0
                        return batch
                    self._cond.wait(wait)
                elif self._closed:
                    return None
                else:
                    self._cond.wait()

    def newest_wait(self, buffer: int, n_frames: int) -> float:
        """Seconds the newest of a taken batch's frames has waited since it arrived."""
        return perf_counter() - self.received_at[buffer, n_frames - 1]

    def release(self, buffer: int, n_frames: int) -> None:
        """Give a buffer from :meth:`take` back for new frames."""
        self.meta[buffer][:n_frames] = [None] * n_frames
        with self._cond:
            self._free.append(buffer)

    def depth(self) -> int:
        """Frames queued and not yet taken."""
        with self._cond:
            return sum(n for _, n in self._full) + self._count

    def close(self) -> None:
        """Stop waiting for frames: :meth:`take` hands out what is left, then ``None``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def discard(self) -> int:
        """Empty the queue without inferring; returns the number of frames thrown away."""
        with self._cond:
            n = sum(n for _, n in self._full) + self._count
            self._free.extend(b for b, _ in self._full)
            if self._open >= 0:
                self._free.append(self._open)
            self._full.clear()
            self._open, self._count = -1, 0
        return n
