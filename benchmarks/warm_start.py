"""Staging the inference device cold, then again with the workers it kept warm.

    python benchmarks/warm_start.py --model M --backend torch --precision bf16 --stages 3

The first ``stage()`` starts the workers (process, imports, engine); with
``keep_warm=True`` every later one takes the same workers, so it costs what attaching
the result monitors and reading the pool's facts cost.
"""

from __future__ import annotations

import argparse
import time
import uuid

from ptychonn_ophyd.cli.options import add_settings_options, settings_from_args
from ptychonn_ophyd.loopback import use_loopback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=3)
    add_settings_options(parser, defaults={"input_channel": "", "wait_for_input": False})
    args = parser.parse_args()
    use_loopback()
    from ptychonn_ophyd.session.device import PtychoNNDetector
    from ptychonn_ophyd.session.supplement import InferenceSupplement

    prefix = f"warm{uuid.uuid4().hex[:8]}"
    settings = settings_from_args(args)
    settings.update(input_channel=f"{prefix}:image", output_prefix=prefix)
    device = PtychoNNDetector(name="inference", keep_warm=True, **settings)
    InferenceSupplement(device)  # staging needs a stream for the results
    try:
        for attempt in range(args.stages):
            begin = time.perf_counter()
            device.stage()
            ready = time.perf_counter() - begin
            pids = device.pool.pids
            device.unstage()
            kind = "cold" if attempt == 0 else "warm"
            print(f"stage {attempt + 1} ({kind}): {ready:.3f} s, workers {pids}", flush=True)
    finally:
        device.shutdown()


if __name__ == "__main__":
    main()
