"""Reads batches from a batch channel with p4p, in a process of its own (p4p and pvapy
each bring their own EPICS libraries), and prints what it read as one JSON line.

    python p4p_batch_reader.py CHANNEL N_FRAMES TIMEOUT
"""

import json
import queue
import sys

from p4p.client.thread import Context

from ptychonn_ophyd.loopback import use_loopback


def main(channel: str, n_frames: int, timeout: float) -> None:
    use_loopback()
    updates: queue.Queue = queue.Queue()
    with Context("pva") as context:
        subscription = context.monitor(channel, updates.put)
        updates.get(timeout=timeout)  # the channel's value when the monitor connected
        print("connected", flush=True)
        seen: dict[str, list] = {"uniqueId": [], "point": [], "shape": [], "id": []}
        while len(seen["uniqueId"]) < n_frames:
            value = updates.get(timeout=timeout)
            n = len(value["uniqueId"])
            seen["uniqueId"] += [int(u) for u in value["uniqueId"]]
            seen["point"] += [int(p) for p in value["point"]]
            seen["shape"].append(
                [n, int(value["height"]), int(value["width"]), len(value["phase"])]
            )
            seen["id"].append(value.getID())
        subscription.close()
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
