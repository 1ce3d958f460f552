"""``ptychonn-ophyd sim``: serve simulated ptychography frames as a PVA areaDetector.

Simulates one scan of a sample (by default the held-out demo object) and free-runs the
frames at a fixed rate on an NTNDArray channel, cycling over the scan, with the scan
position in the ``x``/``y`` (micrometres) and ``point`` attributes.  Runs until Ctrl-C or
until ``--frames`` frames have been sent.  Several channels, separated by commas, take
the frames in turn, ``--scatter-run`` at a time, as areaDetector's ``NDPluginScatter``
hands them to several ``NDPluginPva`` plugins of one IOC.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from ptychonn_ophyd.physics.diffraction import DETECTOR_DTYPES, DetectorConfig, PtychoSimulation
from ptychonn_ophyd.physics.objects import (
    HELD_OUT_MAGNIFICATION,
    HELD_OUT_SIZE,
    available_images,
    held_out_object,
    named_object,
)
from ptychonn_ophyd.physics.probe import PATCH_SIZE, make_probe
from ptychonn_ophyd.physics.scan import fermat_spiral, raster_scan
from ptychonn_ophyd.settings import channel_names
from ptychonn_ophyd.sim.scatter import ScatteredServer, Server, make_server

LARGE_FRAME = 4 * PATCH_SIZE + 4
"""516: a frame that a 2-pixel crop and 4x4 binning turn into the model's 128x128 input."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sim", help="serve simulated detector frames over PVA", description=__doc__
    )
    parser.add_argument(
        "--channel",
        default="sim:det:image",
        help="NTNDArray PV name, or several separated by commas to scatter the frames over",
    )
    parser.add_argument(
        "--scatter-run",
        type=int,
        default=1,
        metavar="N",
        help="frames each of several channels sends in turn: 1 as NDPluginScatter sends "
        "them (read by a pool with --distributor-updates 1), or the pool's scatter_run "
        "(its workers per channel times --distributor-updates)",
    )
    parser.add_argument("--rate", type=float, default=100.0, help="frames/s (0: flat out)")
    parser.add_argument("--frames", type=int, default=0, help="stop after N frames (0: never)")
    parser.add_argument(
        "--object",
        default="held-out",
        metavar="NAME",
        help="'held-out' (camera/moon) or PHASE/AMPLITUDE from: " + ", ".join(available_images()),
    )
    parser.add_argument("--size", type=int, default=HELD_OUT_SIZE, help="object side in pixels")
    parser.add_argument(
        "--magnification",
        type=float,
        default=HELD_OUT_MAGNIFICATION,
        help="object pixels per image pixel",
    )
    parser.add_argument("--scan", choices=["fermat", "raster"], default="fermat")
    parser.add_argument("--radius", type=float, default=1.2, help="scan half-width in um")
    parser.add_argument("--step", type=float, default=0.1, help="scan step in um")
    parser.add_argument("--photons", type=float, default=1e6, help="counts per 128x128 frame")
    parser.add_argument("--dtype", choices=DETECTOR_DTYPES, default="int16")
    parser.add_argument(
        "--frame-size",
        type=int,
        choices=[PATCH_SIZE, LARGE_FRAME],
        default=PATCH_SIZE,
        help=f"{LARGE_FRAME}: crop 2 px a side and bin 4x4 to get the model input",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the counting noise")
    return parser


def build_simulation(args: argparse.Namespace) -> PtychoSimulation:
    """The scan the command serves, from its arguments."""
    if args.object == "held-out":
        obj = held_out_object(args.size, args.magnification)
    else:
        phase, _, amplitude = args.object.partition("/")
        obj = named_object(phase, amplitude or phase, args.size, args.magnification)
    if args.scan == "fermat":
        positions = fermat_spiral(args.radius, args.step)
    else:
        n = int(2 * args.radius / args.step) + 1
        positions = raster_scan(n, n, args.step)
    large = args.frame_size == LARGE_FRAME
    detector = DetectorConfig(
        photons=args.photons, dtype=args.dtype, bin_factor=4 if large else 1, border=2 * large
    )
    return PtychoSimulation(obj, make_probe(), positions, detector, seed=args.seed)


def server_of(args: argparse.Namespace) -> Server:
    """The server of ``--channel`` and ``--scatter-run``.

    Raises
    ------
    ValueError
        A channel name is empty, or several channels' run is shorter than one frame.
    """
    try:
        names = channel_names(args.channel)
    except ValueError as err:
        raise ValueError(f"--channel {err}") from None
    if len(names) > 1 and args.scatter_run < 1:
        raise ValueError(f"--scatter-run must be 1 frame or more, not {args.scatter_run}")
    return make_server(names, args.scatter_run)


def run(args: argparse.Namespace) -> int:
    try:
        server = server_of(args)
        sim = build_simulation(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    frames = sim.frames()
    runs = f" in runs of {args.scatter_run}" if isinstance(server, ScatteredServer) else ""
    print(
        f"{sim.obj.name}: {len(sim)} scan points, frames {frames.shape[1]}x{frames.shape[2]} "
        f"{frames.dtype}, pixel {sim.obj.pixel_size_um * 1e3:g} nm; serving {server.channel}"
        f"{runs} at {args.rate:g} Hz (Ctrl-C stops)"
    )
    n_frames = args.frames or None
    with server:
        server.start_free_run(frames, sim.positions_um, args.rate, n_frames)
        start = time.monotonic()
        try:
            while not server.wait_free_run(timeout=1.0):
                pass
        except KeyboardInterrupt:
            server.stop_free_run()
        elapsed = time.monotonic() - start
    rate = server.frames_sent / elapsed if elapsed > 0 else math.nan
    print(f"sent {server.frames_sent} frames in {elapsed:.1f} s ({rate:.0f} frames/s)")
    if isinstance(server, ScatteredServer):
        print(", ".join(f"{s.channel} {s.frames_sent}" for s in server.servers))
    return 0
