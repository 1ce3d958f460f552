"""Bluesky plans that scan with live PtychoNN inference.

>>> RE(scan_with_inference(det, inference, sy, -1, 1, 5, sx, -1, 1, 5))       # 5x5 grid
>>> RE(scan_with_inference(det, inference, sx, -1, 1, sy, 0, 0, num=20))      # a line
>>> RE(scan_with_inference(det, inference, sy, -1, 1, 5, sx, -1, 1, 5, mode="fly"))

The plans' annotations are evaluated when the module is imported (no
``from __future__ import annotations``): bluesky-queueserver validates a queued plan's
parameters against them, takes a string annotation for an undefined type, and turns
the names of devices into devices only where the annotation is one of bluesky's
protocols (``Readable``, ``Movable``).
"""

from collections import defaultdict
from collections.abc import Generator
from typing import Any, Literal, Protocol

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.plan_patterns import inner_product, outer_product
from bluesky.protocols import Movable, Readable
from bluesky.utils import FailedStatus, Msg, RunEngineControlException

from ptychonn_ophyd.errors import WorkerDiedError
from ptychonn_ophyd.run_schema import (
    FLY_FRAMES_KEY,
    FRAME_STATISTICS_KEY,
    METADATA_KEY,
    PIXEL_SIZE_KEY,
    FrameStatisticsKeys,
)

Plan = Generator[Msg, Any, Any]


class FlyDetector(Protocol):
    """A detector that free-runs along a path (``mode="fly"``).

    ``prepare(points)`` takes the scan's points (``{motor: position}`` each) and
    returns a status; ``kickoff``/``complete`` start and finish the free run;
    ``fly_rate_hz`` is its frame rate.
    """

    fly_rate_hz: float

    def prepare(self, points: list[dict]) -> Any: ...

    def kickoff(self) -> Any: ...

    def complete(self) -> Any: ...


def scan_with_inference(
    detector: Readable,
    inference: Readable,
    *args: Movable | float,
    mode: Literal["step", "fly"] = "step",
    num: int | None = None,
    snake: bool = True,
    md: dict | None = None,
) -> Plan:
    """Scan the sample with the detector while ``inference`` reconstructs every frame.

    Parameters
    ----------
    detector
        The detector whose frames are inferred (e.g. ``SimPtychoDetector``).
    inference
        A :class:`~ptychonn_ophyd.session.device.PtychoNNDetector` reading ``detector``'s stream.
    *args
        ``motor, start, stop`` groups moved together over ``num`` points (as
        ``bp.scan``), or, with ``num=None``, ``motor, start, stop, n`` groups making a
        grid, the first motor slowest (as ``bp.grid_scan``, snaking the faster axes).
    mode
        ``"step"``: at each point, trigger the detector and wait for its frames to be
        inferred. ``"fly"``: the detector free-runs at its frame rate while the motors
        go from point to point; positions travel with the frames as attributes.
    md
        Extra start-document metadata.

    The start document gets the model and pool facts under ``"ptychonn"`` (read after
    the pool has started), the object pixel size when the detector knows it, and, for a
    step scan of a detector that reports frame statistics, their primary-stream keys
    (:class:`FrameStatisticsKeys`); the inference device is staged for the whole plan
    and unstaged on failure or abort.
    """
    if mode not in ("step", "fly"):
        raise ValueError(f"mode must be 'step' or 'fly', not {mode!r}")
    pattern = (
        inner_product(num, args) if num is not None else outer_product(_grid_args(args, snake))
    )
    motors = list(pattern.keys)
    points = list(pattern)
    body = _run(detector, inference, motors, points, mode, args, num, md or {})
    return (yield from bpp.stage_wrapper(body, [detector, inference, *motors]))


def _grid_args(args: tuple, snake: bool) -> list:
    """``bp.grid_scan`` arguments with ``snake`` applied to every axis but the first."""
    if len(args) % 4:
        raise ValueError("without num, give motor, start, stop, n for each motor")
    groups = [list(args[i : i + 4]) for i in range(0, len(args), 4)]
    return [v for i, g in enumerate(groups) for v in (g if i == 0 else [*g, snake])]


def _run(
    detector: Any,
    inference: Any,
    motors: list,
    points: list[dict],
    mode: str,
    args: tuple,
    num: int | None,
    md: dict,
) -> Plan:
    """Open the run (the devices are staged by now, so the pool facts are known)."""
    start = {
        "plan_name": "scan_with_inference",
        "plan_args": {"args": [repr(a) if hasattr(a, "name") else a for a in args], "num": num},
        "mode": mode,
        "detectors": [detector.name, inference.name],
        "motors": [m.name for m in motors],
        "num_points": 1 if mode == "fly" else len(points),  # events in the primary stream
        METADATA_KEY: inference.facts(),
        "hints": {"dimensions": [(m.hints["fields"], "primary") for m in motors]},
    }
    if mode == "fly":
        start[FLY_FRAMES_KEY] = len(points)
    pixel_size = _object_pixel_size(detector)
    if pixel_size:
        start[PIXEL_SIZE_KEY] = pixel_size
    statistics = FrameStatisticsKeys.of(detector)
    if statistics is not None and mode == "step":  # a free run records no point's frames
        start[FRAME_STATISTICS_KEY] = statistics.as_start()
    if mode == "fly":
        steps = _fly(detector, inference, motors, points)
    else:
        steps = _step(detector, inference, motors, points)
    return (yield from bpp.run_wrapper(_failing_with_cause(steps, inference), md={**start, **md}))


def _failing_with_cause(plan: Plan, inference: Any) -> Plan:
    """``plan``, ending with the error that made it fail, not the one that reached it.

    The run's stop document takes its ``reason`` from the exception that ends the
    plan.  What reaches the plan when a worker dies is ``FailedStatus(<status>)``, or
    at times a ``WaitForTimeoutError`` the RunEngine raises because one status of a
    group failed first; either says nothing useful.  So a dead worker of
    ``inference``'s pool (a ``WorkerDiedError`` naming it, its exit status and its
    counts) or else the exception of a failed status in the chain ends the plan.
    It is raised outside the ``except`` block: bluesky raised ``FailedStatus`` *from*
    the status's exception, so raising that from there would chain the two into a loop.
    """
    try:
        return (yield from plan)
    except RunEngineControlException:
        raise
    except Exception as exc:
        error = _worker_death(inference) or _failed_status_error(exc)
        if error is None:
            raise
    raise error


def _worker_death(inference: Any) -> WorkerDiedError | None:
    """The ``WorkerDiedError`` of ``inference``'s pool, if a worker of it died."""
    pool = getattr(inference, "pool", None)
    try:
        if pool is not None:
            pool.check_health()
    except WorkerDiedError as died:
        return died
    return None


def _failed_status_error(exc: BaseException) -> Exception | None:
    """The exception of the first failed status in ``exc``'s chain of causes, if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, FailedStatus) and exc.args and hasattr(exc.args[0], "exception"):
            error = exc.args[0].exception()
            if isinstance(error, Exception):
                return error
        exc = exc.__cause__ or exc.__context__
    return None


def _object_pixel_size(detector: Any) -> float | None:
    """The detector's ``object_pixel_size_um``, or its simulation's object pixel size."""
    size = getattr(detector, PIXEL_SIZE_KEY, None)
    if size is None and hasattr(detector, "simulation"):
        size = detector.simulation.obj.pixel_size_um
    return float(size) if size else None


def _step(detector: Any, inference: Any, motors: list, points: list[dict]) -> Plan:
    """At each point: move, trigger the detector, wait for inference, read everything.

    ``move_per_step`` begins with a checkpoint: one Ctrl-C pauses at the next point, and
    a resumed scan takes the point it was paused in again.
    """
    cache: dict = defaultdict(lambda: None)
    for point in points:
        yield from bps.move_per_step(point, cache)
        yield from bps.trigger(detector, wait=True)
        yield from bps.trigger(inference, wait=True)
        yield from _read_event([*motors, detector, inference])


def _fly(detector: Any, inference: Any, motors: list, points: list[dict]) -> Plan:
    """Run the detector's trajectory, then wait until every frame is inferred.

    The detector is a :class:`FlyDetector`: it is prepared with the scan's points and
    free-runs along them (kickoff, complete), each frame carrying its position, so the
    RunEngine handles a few messages a scan, not a few a frame.  The motors are put at
    the first point before and at the last point after, where the trajectory leaves
    them.
    """
    yield from bps.mv(*_motion(points[0]))
    yield from bps.prepare(detector, points, wait=True)
    yield from bps.kickoff(detector, wait=True)
    yield from bps.complete(detector, wait=True)
    yield from bps.mv(*_motion(points[-1]))
    yield from bps.trigger(inference, wait=True)
    yield from _read_event([*motors, detector, inference])


def _motion(point: dict) -> list:
    """``bps.mv`` arguments that put each motor of ``point`` at its position."""
    return [value for motor, position in point.items() for value in (motor, position)]


def _read_event(devices: list) -> Plan:
    yield from bps.create("primary")
    for device in devices:
        yield from bps.read(device)
    yield from bps.save()
