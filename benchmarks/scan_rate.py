"""A fly scan through the whole session, as a user runs it: how long it takes against its
acquisition, and what the session's process spends a frame.

``scan_with_inference(..., mode="fly")`` on a RunEngine with the inference device wired
to a catalog (``connect``, an embedded Tiled catalog) or, with ``--catalog none``, its
documents to a callback that only counts them (a host without Tiled's server stack);
either way the supplement writes every result into the run's HDF5 file.  The simulated
detector free-runs at ``--rate`` along a ``--side`` x ``--side`` grid, ``--passes``
times; a model that copies its input (``--model copy``) leaves the pipeline's own cost.

Printed, for a small scan (``--baseline-side``) and then the one asked for: the scan's
wall time against its acquisition time (frames / rate), the time spent simulating the
frames (in ``prepare``, before the acquisition; not counted), the session process's CPU
per frame by thread, the workers' CPU, the rows stored and the frame accounting; then
the marginal CPU per frame between the two scans (what a frame costs once the per-scan
costs, Tiled's writes of a run's documents above all, are left out).  Everything the
session process spends counts but the simulation and the detector's sending thread
(which measures itself): the threads of the simulated detector's PV Access server,
which a real detector runs in its own IOC, cannot be told from the session's own PV
Access threads and count too, so the figure errs high.  With ``--detector-process`` the
simulated detector sends from a process of its own, as an IOC does, and its CPU is
printed apart: the session's figure is then the session's alone.

    python benchmarks/scan_rate.py --side 100 --rate 2000                   # 2-core machine
    python benchmarks/scan_rate.py --side 150 --passes 27 --rate 20000 --workers 8 \\
        --catalog none                                                       # H200 host

With ``--channels K`` the simulated detector scatters its frames over K channels in
turn, as areaDetector's ``NDPluginScatter`` feeds several PVA plugins, and each channel
has workers / K of the workers: one channel serves its monitors from its sending thread,
which holds one channel with eight workers to about 20,000 frames a second.

With ``--store-process`` the results are received and written by the device's store
process; its CPU is printed apart, and beside the session's.  With ``--catalog serve``
the runs go to a ``tiled serve`` on loopback configured as
``examples/tiled-server.yml`` (the README's production set-up), whose CPU is printed
apart too: the session then only posts the documents.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from ptychonn_ophyd.loopback import use_loopback

if TYPE_CHECKING:  # a host without Tiled's server stack runs --catalog none
    from ptychonn_ophyd.tiled_server import LoopbackServer

HERE = Path(__file__).resolve().parent

TICKS = os.sysconf("SC_CLK_TCK")
"""Clock ticks a second: the unit of /proc's CPU times."""
PVA_THREADS = {"TCP-rx", "TCP-tx"}
"""PV Access's transport threads, the simulated detector's server's among them."""
SAMPLER = "scan_rate-sampler"
"""Name of the thread that reads the CPU times."""
NOT_COUNTED = {  # threads listed but not counted as the session's
    "sim-free-run": " (the detector sending: not counted)",
    SAMPLER: " (this benchmark's readings: not counted)",
}


class ThreadCpu:
    """The CPU of each thread of this process, read every ``period`` s from a thread of
    its own, so that a thread which ends during the scan (the writer's, a status's)
    still shows with its name and what it used up to its last reading."""

    def __init__(self, period: float = 0.2) -> None:
        self.cpu: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self._period = period
        self._stop = threading.Event()
        self._read()
        self._thread = threading.Thread(target=self._run, name=SAMPLER, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._read()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self._read()

    def _read(self) -> None:
        python = {t.native_id: t.name for t in threading.enumerate() if t.native_id}
        for task in Path("/proc/self/task").iterdir():
            tid = int(task.name)
            try:
                stat = (task / "stat").read_text()
                self.names.setdefault(tid, python.get(tid) or (task / "comm").read_text().strip())
            except (ProcessLookupError, FileNotFoundError):  # the thread ended meanwhile
                continue
            fields = stat.rsplit(")", 1)[1].split()
            self.cpu[tid] = (int(fields[11]) + int(fields[12])) / TICKS


def is_store(process: psutil.Process) -> bool:
    """Whether ``process`` is the results store (``--store-process``)."""
    return _runs(process, "ptychonn_ophyd.store.relay")


def is_helper(process: psutil.Process) -> bool:
    """Whether ``process`` is multiprocessing's resource tracker (started with the
    ``--detector-process`` child; it idles)."""
    return _runs(process, "resource_tracker")


def _runs(process: psutil.Process, what: str) -> bool:
    try:
        return any(what in part for part in process.cmdline())
    except psutil.NoSuchProcess:
        return False


def workers_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            cpu = psutil.Process(pid).cpu_times()
            total += cpu.user + cpu.system + cpu.children_user + cpu.children_system
        except psutil.NoSuchProcess:
            pass
    return total


class Documents:
    """Counts the documents of each kind (what a callback sees without a catalog)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, name: str, doc: dict) -> None:
        self.counts[name] += 1


def model_path(choice: str, folder: Path) -> Path:
    if choice != "copy":
        return Path(choice)
    sys.path.insert(0, str(HERE))
    from stream import copy_model

    return copy_model(folder)


@dataclass
class World:
    RE: Any
    sx: Any
    sy: Any
    det: Any
    inference: Any
    documents: Documents
    catalog: Any
    server: LoopbackServer | None
    """The ``tiled serve`` of ``--catalog serve``."""


SERVER_CONFIG = HERE.parent / "examples" / "tiled-server.yml"


@contextlib.contextmanager
def tiled_serve(folder: Path) -> Iterator[LoopbackServer]:
    """``tiled serve`` with the README's configuration on loopback, its files in
    ``folder``; sets the session's ``TILED_API_KEY`` and ``PTYCHONN_ASSETS`` as the
    README says."""
    from ptychonn_ophyd.tiled_server import serve_on_loopback

    key, assets = secrets.token_hex(16), folder / "assets"
    os.environ.update(TILED_API_KEY=key, PTYCHONN_ASSETS=str(assets))
    with serve_on_loopback(SERVER_CONFIG, folder / "server", assets, key, os.environ) as server:
        yield server


def build(args: argparse.Namespace, folder: Path, server: LoopbackServer | None) -> World:
    """The RunEngine, motors, detector and inference device, wired as ``connect`` does."""
    from bluesky import RunEngine
    from ophyd.sim import SynAxis

    from ptychonn_ophyd.physics.diffraction import PtychoSimulation
    from ptychonn_ophyd.physics.objects import held_out_object
    from ptychonn_ophyd.physics.probe import make_probe
    from ptychonn_ophyd.session.device import PtychoNNDetector
    from ptychonn_ophyd.sim.detector import SimPtychoDetector

    prefix = f"scanrate{int(time.time())}"
    sx, sy = SynAxis(name="sx"), SynAxis(name="sy")
    simulation = PtychoSimulation(held_out_object(256), make_probe())
    channel = f"{prefix}:image"
    if args.channels > 1:
        channel = ",".join(f"{prefix}:image{k}" for k in range(1, args.channels + 1))
    det = SimPtychoDetector(
        simulation, sx, sy, channel, name="det", server_process=args.detector_process
    )
    det.fly_rate_hz = args.rate
    inference = PtychoNNDetector(
        name="inference",
        model=str(model_path(args.model, folder)),
        backend=args.backend,
        n_workers=args.workers,
        batch_size=args.batch_size,
        threads=args.threads,
        input_channel=channel,
        output_prefix=f"{prefix}:inference",
        source=det,
        log_dir=folder / "logs",
        start_timeout=300,
        store_process=args.store_process,
        server_queue_size=args.server_queue_size,
        receiver_queue_size=args.receiver_queue_size,
    )
    det.scatter_run = inference.pool_config().scatter_run
    RE = RunEngine()
    documents = Documents()
    RE.subscribe(documents)
    if args.catalog == "none":
        from ptychonn_ophyd.session.supplement import InferenceSupplement

        assets = Path(args.assets or folder / "assets")
        assets.mkdir(parents=True, exist_ok=True)
        RE.preprocessors.append(InferenceSupplement(inference, assets, grace=args.grace))
        catalog = None
    else:
        from ptychonn_ophyd.session.wiring import connect

        where = server.uri if server is not None else args.catalog or folder / "catalog"
        catalog = connect(RE, inference, where, grace=args.grace)
    return World(RE, sx, sy, det, inference, documents, catalog, server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=100, help="grid points a side")
    parser.add_argument("--passes", type=int, default=1, help="times the path is flown")
    parser.add_argument(
        "--baseline-side", type=int, default=10, help="side of the small scan run first"
    )
    parser.add_argument("--rate", type=float, default=2000.0, help="frames/s")
    parser.add_argument("--model", default="copy", help="'copy' or a model file")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grace", type=float, default=30.0)
    parser.add_argument(
        "--server-queue-size",
        type=int,
        default=100,
        help="frames the detector's server queues for each worker (the device's default)",
    )
    parser.add_argument(
        "--receiver-queue-size",
        type=int,
        default=0,
        help="frames each worker's pvapy queues in C++ before process() (0: none, the default)",
    )
    parser.add_argument(
        "--catalog",
        default="",
        help="catalog folder, 'serve' (a tiled serve on loopback, its CPU apart) or 'none'",
    )
    parser.add_argument("--assets", default="", help="HDF5 folder with --catalog none")
    parser.add_argument(
        "--store-process",
        action="store_true",
        help="receive and write the results in a store process (its CPU shown apart)",
    )
    parser.add_argument(
        "--detector-process",
        action="store_true",
        help="the simulated detector sends from a process of its own (its CPU shown apart)",
    )
    parser.add_argument(
        "--channels",
        type=int,
        default=1,
        help="channels the detector scatters its frames over, each read by workers / "
        "channels workers (with --detector-process each channel sends from its own process)",
    )
    args = parser.parse_args()
    use_loopback()

    folder = Path(tempfile.mkdtemp(prefix="scan_rate-"))
    frames = args.side * args.side * args.passes
    need = frames * 128 * 128 * 4 * 1.05
    free = shutil.disk_usage(args.assets or folder).free
    if need > free:
        sys.exit(f"scan_rate: {frames} rows need {need / 2**30:.1f} GiB, {free / 2**30:.1f} free")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
        server = stack.enter_context(tiled_serve(folder)) if args.catalog == "serve" else None
        world = build(args, folder, server)
        stack.callback(world.inference.shutdown)
        world.inference.keep_warm = True  # the scans are timed without the workers' start
        base = scan(world, args.baseline_side, 1, args)
        big = scan(world, args.side, args.passes, args)
    extra = big.frames - base.frames
    print(
        f"marginal session CPU per frame ({args.side}x{args.side} x {args.passes} against "
        f"{args.baseline_side}x{args.baseline_side}, the per-scan costs cancelled): "
        f"{1e6 * (big.session_cpu - base.session_cpu) / extra:.1f} us; per-scan cost "
        f"{big.session_cpu - big.frames * (big.session_cpu - base.session_cpu) / extra:.2f} s"
    )


@dataclass
class Scan:
    frames: int
    session_cpu: float


def scan(world: World, side: int, passes: int, args: argparse.Namespace) -> Scan:
    """Fly a ``side`` x ``side`` grid ``passes`` times; print what it took."""
    from ptychonn_ophyd.session.plans import scan_with_inference
    from ptychonn_ophyd.sim.server_process import SimDetectorProcess

    det, inference, RE = world.det, world.inference, world.RE
    frames = side * side * passes
    det.fly_passes = passes
    simulated: dict[str, float] = {}
    prepare = type(det).prepare

    def prepare_and_time(points):
        t0, c0 = time.perf_counter(), time.thread_time()
        status = prepare(det, points)
        simulated.update(wall=time.perf_counter() - t0, cpu=time.thread_time() - c0)
        simulated["thread"] = threading.get_native_id()
        return status

    det.prepare = prepare_and_time
    plan = scan_with_inference(
        det, inference, world.sy, -0.5, 0.5, side, world.sx, -0.5, 0.5, side, mode="fly"
    )
    me = psutil.Process()
    RE(_stage_only(det, inference))  # workers up (kept warm) before the clock starts
    children = me.children(recursive=True)
    servers = [world.server.process.pid] if world.server is not None else []
    senders = getattr(det.server, "servers", [det.server])  # several if scattered
    detector = [s.process.pid for s in senders if isinstance(s, SimDetectorProcess)]
    apart = {*servers, *detector}
    pids = [
        child.pid
        for child in children
        if not (is_store(child) or is_helper(child) or child.pid in apart)
    ]
    stores = [child.pid for child in children if is_store(child)]
    process_before = sum(me.cpu_times()[:2])
    workers_before, store_before = workers_cpu(pids), workers_cpu(stores)
    server_before, detector_before = workers_cpu(servers), workers_cpu(detector)
    threads = ThreadCpu()
    before = dict(threads.cpu)
    t0 = time.perf_counter()
    try:
        (uid,) = RE(plan)
    except Exception as error:  # the run's accounting still says what became of each frame
        threads.stop()
        print(f"fly scan {side}x{side} x {passes} FAILED: {type(error).__name__}: {error}")
        print_accounting(inference_summary(RE))
        raise SystemExit(1) from error
    wall = time.perf_counter() - t0
    threads.stop()
    process = sum(me.cpu_times()[:2]) - process_before - simulated["cpu"]
    workers = workers_cpu(pids) - workers_before
    store = workers_cpu(stores) - store_before
    served = workers_cpu(servers) - server_before
    detecting = workers_cpu(detector) - detector_before

    acquisition = frames / args.rate
    counted = wall - simulated["wall"]
    print(
        f"fly scan {side}x{side} x {passes} pass(es) = {frames} frames at "
        f"{args.rate:.0f} Hz: acquisition {acquisition:.2f} s, wall {wall:.2f} s, of which "
        f"simulating the frames {simulated['wall']:.2f} s -> {counted:.2f} s "
        f"({counted / acquisition:.2f} x acquisition); the detector sent at "
        f"{det.server.free_run_rate:.0f} Hz"
    )
    per_thread: Counter[tuple[int, str]] = Counter()
    for tid, cpu in threads.cpu.items():
        used = cpu - before.get(tid, 0.0)
        if tid == simulated["thread"]:
            used -= simulated["cpu"]
        per_thread[(tid, threads.names.get(tid, "?"))] += used
    sending = 0.0 if detector else det.server.free_run_cpu  # a child's is not ours
    sampling = sum(used for (_, name), used in per_thread.items() if name == SAMPLER)
    unseen = process - sum(per_thread.values())
    session = process - sending - sampling
    print("session process CPU by thread (ms per frame):")
    for (tid, name), used in per_thread.most_common():
        if used >= 1e-3:
            apart = NOT_COUNTED.get(name, "")
            print(f"  {name:<36} {tid:>8} {1e3 * used / frames:8.4f}{apart}")
    print(f"  {'(between the last readings)':<36} {'':>8} {1e3 * unseen / frames:8.4f}")
    print(
        f"session CPU per frame: {1e6 * session / frames:.1f} us "
        f"({session:.2f} s over {counted:.2f} s: {session / counted:.2f} cores); "
        f"workers {1e6 * workers / frames:.1f} us"
    )
    transport = sum(used for (_, name), used in per_thread.items() if name in PVA_THREADS)
    rest = session - transport
    whose = (
        "the session's own: the detector sends from its process"
        if detector
        else "with --store-process mostly the simulated detector's server sending its frames, "
        "which a detector's IOC does in its own process (--detector-process)"
    )
    print(
        f"  of which PV Access's TCP threads {1e6 * transport / frames:.1f} us ({whose}): "
        f"the rest {1e6 * rest / frames:.1f} us"
    )
    if stores:
        print(
            f"store process CPU per frame: {1e6 * store / frames:.1f} us "
            f"({store / counted:.2f} cores); session and store together "
            f"{1e6 * (session + store) / frames:.1f} us"
        )
    if detector:
        print(
            f"simulated detector process CPU per frame: {1e6 * detecting / frames:.1f} us "
            f"(not the session's; its sending thread {1e6 * det.server.free_run_cpu / frames:.1f}"
            " us, the rest mostly making the path's NTNDArrays in prepare)"
        )
    if servers:
        print(
            f"tiled serve CPU per frame: {1e6 * served / frames:.1f} us "
            f"({served:.2f} s: {served / counted:.2f} cores)"
        )
    summary, rows = results(world, uid)
    print(f"rows stored: {rows}; documents: {dict(world.documents.counts)}")
    print_accounting(summary)
    world.documents.counts.clear()
    for path in Path(summary["file"]).parent.glob(f"{uid}-*.h5"):
        path.unlink()  # a long soak writes tens of GB
    return Scan(frames, session)


def print_accounting(summary: dict) -> None:
    print("accounting: " + ", ".join(f"{k} {v}" for k, v in summary.items() if k != "file"))


def results(world: World, uid: str) -> tuple[dict, int]:
    """The run's frame accounting and the rows its stream holds."""
    from ptychonn_ophyd.run_schema import STREAM, frame_accounting

    if world.catalog is None:
        summary = inference_summary(world.RE)
        return summary, summary["stored"]
    run = world.catalog[uid]
    return frame_accounting(run), len(run[STREAM]["unique_id"].read())


def inference_summary(RE) -> dict:
    """The last run's frame accounting, from the supplement (no catalog to read back)."""
    from ptychonn_ophyd.session.supplement import InferenceSupplement

    (supplement,) = [p for p in RE.preprocessors if isinstance(p, InferenceSupplement)]
    return dict(supplement.accounting.summary)


def _stage_only(det, inference):
    """Start the workers (kept warm) before the timed scan, as a beamline's are."""
    import bluesky.plan_stubs as bps

    yield from bps.stage(det)
    yield from bps.stage(inference)
    yield from bps.unstage(inference)
    yield from bps.unstage(det)


if __name__ == "__main__":
    main()
