"""The store process's relay, driven through its pipe as the session drives it: batches go
out without their images, and the rows each run keeps (and only those) reach its file."""

import threading
from multiprocessing import Pipe

import h5py
import numpy as np
import pytest

from ptychonn_ophyd.errors import ResultStoreError, StorageFullError
from ptychonn_ophyd.store.file import RowLayout
from ptychonn_ophyd.store.relay import (
    Relay,
    each,
    error_from,
    error_text,
    joined,
    key_of,
    pack,
    unpack,
)
from ptychonn_ophyd.wire import BATCH_FRAME_FIELDS, ResultBatch

LAYOUT = RowLayout((4, 4), False)


def result_batch(number: int, ids: list[int]) -> ResultBatch:
    n = len(ids)
    frames = {name: np.zeros(n) for name in BATCH_FRAME_FIELDS}
    frames["uniqueId"] = np.array(ids, np.int64)
    frames["x"] = 0.5 * np.array(ids, float)
    phase = np.arange(n * 16, dtype=np.float32).reshape(n, 4, 4) + 100 * number
    return ResultBatch(2, "0123456789ab", number, 0, 1e9, frames, phase)


class Session:
    """The session's end of the pipe: what it sends, and the store's messages one by one
    (those that came as one ``many`` taken apart)."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self._pending: list[tuple] = []

    def send(self, *messages: tuple) -> None:
        self.conn.send(joined(list(messages)))

    def replies(self, until: str) -> list[tuple]:
        """Messages from the store up to and including the first of kind ``until``."""
        got = []
        while not got or got[-1][0] != until:
            if not self._pending:
                assert self.conn.poll(10), f"no {until!r} from the store"
                self._pending.extend(each(self.conn.recv()))
            got.append(self._pending.pop(0))
        return got


@pytest.fixture
def relay():
    conn, store = Pipe()
    session = Session(conn)
    relay = Relay(store, images=False, overruns=lambda: 3)

    def serve():
        relay.serve()
        relay.close_all()

    serving = threading.Thread(target=serve)
    serving.start()
    yield session, relay
    session.send(("stop",))
    serving.join(10)
    assert not serving.is_alive()


def test_the_store_writes_the_rows_its_run_keeps_and_relays_batches_without_images(relay, tmp_path):
    session, store = relay
    path = tmp_path / "run.h5"
    session.send(("open", "run", path, LAYOUT, 0))
    assert session.replies("opened")[-1] == ("opened", "run", None)
    first, second, third = result_batch(1, [1, 2, 3]), result_batch(2, [4, 5]), result_batch(3, [7])
    for batch in (first, second, third):
        store.relay(batch)
    relayed = [session.replies("batch")[-1] for _ in range(3)]
    for (_, packed, overruns), sent in zip(relayed, (first, second, third), strict=True):
        got = unpack(packed)
        assert got.phase is None and overruns == 3
        assert key_of(got) == key_of(sent)
        np.testing.assert_array_equal(got.unique_ids, sent.unique_ids)
        np.testing.assert_array_equal(got.frames["x"], sent.frames["x"])
    session.send(  # as the session answers the batches of one pipe message: at once
        ("keep", "run", key_of(first), np.array([True, False, True])),
        ("drop", key_of(second)),
        ("keep", "run", key_of(third), np.array([True])),
    )
    session.send(("close", "run"))
    assert session.replies("closed")[-1] == ("closed", "run", 3, None)

    with h5py.File(path, "r") as file:
        assert file["unique_id"][:].tolist() == [1, 3, 7]
        np.testing.assert_array_equal(file["x"][:], [0.5, 1.5, 3.5])
        np.testing.assert_array_equal(file["phase"][:2], first.phase[[0, 2]])
        np.testing.assert_array_equal(file["phase"][2], third.phase[0])
    session.send(("release", "run"))


def test_a_run_the_disk_has_no_room_for_is_refused_as_a_full_disk(relay, tmp_path):
    session, _ = relay
    session.send(("open", "run", tmp_path / "run.h5", LAYOUT, 1 << 62))
    (_, uid, text) = session.replies("opened")[-1]
    error = error_from(text)
    assert uid == "run" and isinstance(error, StorageFullError)
    assert "disk full" in str(error) and "run run stops with 0 result(s) stored" in str(error)
    assert not (tmp_path / "run.h5").exists()


def test_other_errors_cross_the_pipe_as_store_errors_naming_them():
    error = error_from(error_text(OSError(5, "Input/output error")))
    assert isinstance(error, ResultStoreError)
    assert str(error) == "OSError: [Errno 5] Input/output error"


def test_packing_keeps_the_images_when_asked():
    batch = result_batch(5, [10, 11])
    got = unpack(pack(batch, images=True))
    np.testing.assert_array_equal(got.phase, batch.phase)
    assert got.amplitude is None and got.model_hash == batch.model_hash
    assert len(got) == 2
