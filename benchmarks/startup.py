"""Time from ``ConsumerPool.start()`` to every worker ready, several starts in a row.

    python benchmarks/startup.py --model M --backend torch --precision bf16 --starts 3

The first start is cold (files, Python imports, CUDA initialisation, graph capture);
later ones find the operating system's caches warm. The torch backend captures its
CUDA graphs anew in every worker process; only TensorRT caches its engine on disk.
"""

from __future__ import annotations

import argparse
import re
import time
import uuid

from ptychonn_ophyd.cli.options import add_settings_options, settings_from_args
from ptychonn_ophyd.loopback import use_loopback

READY_LINE = re.compile(r"ready ([\d.]+) s after its process started \(engine ([\d.]+) s\)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=3)
    add_settings_options(parser, defaults={"input_channel": "", "wait_for_input": False})
    args = parser.parse_args()
    use_loopback()
    from ptychonn_ophyd.pool import ConsumerPool
    from ptychonn_ophyd.settings import PoolConfig

    for attempt in range(args.starts):
        settings = settings_from_args(args)
        settings.update(
            input_channel=f"startup{uuid.uuid4().hex[:8]}:image",
            output_prefix=f"startup{uuid.uuid4().hex[:8]}",
        )
        begin = time.perf_counter()
        with ConsumerPool(PoolConfig(**settings)) as pool:
            pool.start(timeout=300)
            ready = time.perf_counter() - begin
            engine = pool.facts().get("engine")
            split = [READY_LINE.search(path.read_text()) for path in pool.log_paths]
        parts = [f"process {m[1]} s, engine {m[2]} s" for m in split if m]
        print(
            f"start {attempt + 1}: ready in {ready:.2f} s ({engine}); per worker, from its "
            f"process start to ready: {'; '.join(parts)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
