"""Scan the simulated sample with live PtychoNN inference and store it in a catalog.

    .venv/bin/python examples/scan.py [--catalog FOLDER_OR_URI] [--model MODEL.onnx] [--fly]
                                      [--plots]

Runs an 11x11 step scan (or, with --fly, a 15x15 fly scan at 200 frames/s) over the
simulated held-out object, its points 100 nm apart: the probe is about 230 nm wide (FWHM),
so neighbouring patches overlap by more than half, as ptychography needs (and as the
demo scans). The live view stitches each patch with its frame's tilt and the detector's
probe, and stores its image with the run. The run, with its ``inference`` stream, goes into the
catalog (default: the embedded one in ~/.local/share/ptychonn-ophyd/catalog); replay it
with ``.venv/bin/python examples/replay.py``. Scan ids go on from the last scan of the
IPython profile or of this example (the RunEngine's metadata persists in the same
place). The live table is printed; live plots, which cost more than the scan, only
with --plots.
"""

import argparse

from ptychonn_ophyd.loopback import use_loopback

use_loopback(force=False)

from bluesky import RunEngine  # noqa: E402
from bluesky.callbacks.best_effort import BestEffortCallback  # noqa: E402
from bluesky.utils import PersistentDict  # noqa: E402
from ophyd.sim import SynAxis  # noqa: E402

from ptychonn_ophyd.models.bundled import demo_model_path  # noqa: E402
from ptychonn_ophyd.paths import run_engine_metadata  # noqa: E402
from ptychonn_ophyd.physics.diffraction import PtychoSimulation  # noqa: E402
from ptychonn_ophyd.physics.objects import held_out_object  # noqa: E402
from ptychonn_ophyd.physics.probe import make_probe  # noqa: E402
from ptychonn_ophyd.run_schema import frame_accounting  # noqa: E402
from ptychonn_ophyd.session.device import PtychoNNDetector  # noqa: E402
from ptychonn_ophyd.session.display import NO_FIGURES, choose_backend  # noqa: E402
from ptychonn_ophyd.session.live_view import LiveView  # noqa: E402
from ptychonn_ophyd.session.plans import scan_with_inference  # noqa: E402
from ptychonn_ophyd.session.progress import show_progress  # noqa: E402
from ptychonn_ophyd.session.wiring import connect  # noqa: E402
from ptychonn_ophyd.sim.detector import SimPtychoDetector  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", help="catalog folder or Tiled URI")
    parser.add_argument("--model", help="PtychoNN ONNX model (default: the bundled demo model)")
    parser.add_argument("--fly", action="store_true", help="fly scan instead of step scan")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--channel", default="example:image", help="detector PV name")
    parser.add_argument("--plots", action="store_true", help="live plots besides the table")
    args = parser.parse_args()

    sx, sy = SynAxis(name="sx"), SynAxis(name="sy")  # micrometres
    det = SimPtychoDetector(
        PtychoSimulation(held_out_object(), make_probe()), sx, sy, args.channel, name="det"
    )
    inference = PtychoNNDetector(
        name="inference",
        model=args.model or str(demo_model_path()),
        n_workers=args.workers,
        input_channel=args.channel,
        output_prefix=f"{args.channel}:inference",
        source=det,
    )

    RE = RunEngine()
    RE.md = PersistentDict(run_engine_metadata())  # scan ids go on from the last session
    live_view = LiveView(probe=det.probe, figure="auto" if args.plots else False)
    catalog = connect(RE, inference, args.catalog, live_view=live_view)
    show_progress(RE, inference)  # before the table, so its lines print on a clean line
    bec = BestEffortCallback()
    if not args.plots or choose_backend() == NO_FIGURES:  # Qt, or no figures and why
        bec.disable_plots()
    RE.subscribe(bec)

    half, n = (0.7, 15) if args.fly else (0.5, 11)  # µm and points per axis: 100 nm apart
    if args.fly:
        det.fly_rate_hz = 200
    mode = "fly" if args.fly else "step"
    plan = scan_with_inference(det, inference, sy, -half, half, n, sx, -half, half, n, mode=mode)
    try:
        (uid,) = RE(plan)
    finally:
        live_view.close()
        det.close()
    run = catalog[uid]
    counts = frame_accounting(run)
    print(
        f"scan {run.metadata['start']['scan_id']} run {uid}: {counts['produced']} sent, "
        f"{counts['inferred']} inferred, {counts['stored']} stored"
    )


if __name__ == "__main__":
    main()
