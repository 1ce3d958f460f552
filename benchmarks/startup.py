"""Time from ``ConsumerPool.start()`` to every worker ready, several starts in a row.

    python benchmarks/startup.py --model M --backend torch --precision bf16 --starts 3

The first start is cold (files, Python imports, CUDA initialisation, graph capture);
later ones find the operating system's caches warm. The torch backend captures its
CUDA graphs anew in every worker process; only TensorRT caches its engine on disk.
"""

from __future__ import annotations

import argparse
import time
import uuid

from ptychonn_ophyd.loopback import use_loopback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args()
    use_loopback()
    from ptychonn_ophyd.pool import ConsumerPool
    from ptychonn_ophyd.settings import PoolConfig

    for attempt in range(args.starts):
        config = PoolConfig(
            model=args.model,
            input_channel=f"startup{uuid.uuid4().hex[:8]}:image",
            output_prefix=f"startup{uuid.uuid4().hex[:8]}",
            n_workers=args.workers,
            backend=args.backend,
            precision=args.precision,
            batch_size=args.batch_size,
            wait_for_input=False,
        )
        begin = time.perf_counter()
        with ConsumerPool(config) as pool:
            pool.start(timeout=300)
            ready = time.perf_counter() - begin
            engine = pool.facts().get("engine")
        print(f"start {attempt + 1}: ready in {ready:.2f} s ({engine})", flush=True)


if __name__ == "__main__":
    main()
