"""What a Tiled server must have to store these runs, checked before the first scan.

A server missing one of these accepts a run and fails late: without its catalog of
Bluesky runs at the root, ``replay -1`` and scan ids find nothing; without the assets
folder in its ``readable_storage``, the HDF5 files register, the scan ends ``success``,
and only reading ``inference/phase`` fails; without an SQL table store, the first event
fails after a minute of retries.  :func:`check_server` tries each on a node of its own
(an HDF5 file registered and read back, a table appended to), removes that node, and
names the first missing setting in one line.  ``examples/tiled-server.yml`` is a server
configuration that has them all.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tiled.client.container import Container

from ptychonn_ophyd.catalog import RUNS_SPEC, is_catalog_of_runs
from ptychonn_ophyd.errors import CatalogError

log = logging.getLogger(__name__)

PROBE_PREFIX = "_ptychonn_check_"
"""Key prefix of the node :func:`check_server` writes and then deletes."""
_DATASET = "probe"


@dataclass(frozen=True)
class LoopbackServer:
    """A ``tiled serve`` started by :func:`serve_on_loopback`."""

    uri: str
    process: subprocess.Popen


@contextlib.contextmanager
def serve_on_loopback(
    config: Path,
    data: Path,
    assets: Path,
    api_key: str,
    env: Mapping[str, str],
    timeout: float = 120.0,
) -> Iterator[LoopbackServer]:
    """``tiled serve config`` on a free loopback port, in the environment ``env`` with
    ``TILED_DATA=data`` and ``PTYCHONN_ASSETS=assets`` (what ``examples/tiled-server.yml``
    reads), its log in ``data/server.log``; stopped on leaving.

    Raises
    ------
    CatalogError
        The server ended, or did not answer within ``timeout`` s (with its log's end).
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data.mkdir(parents=True, exist_ok=True)
    tiled = Path(sys.executable).with_name("tiled")
    command = [str(tiled), "serve", "config", str(config), "--api-key", api_key]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    server_env = {**env, "TILED_DATA": str(data), "PTYCHONN_ASSETS": str(assets)}
    log_path = data / "server.log"
    uri, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    with log_path.open("w") as log:
        server = subprocess.Popen(command, env=server_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while not _answers(uri):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise CatalogError(
                        f"tiled serve {config} did not answer at {uri}: "
                        f"{log_path.read_text()[-2000:]}"
                    )
                time.sleep(0.2)
            yield LoopbackServer(uri, server)
        finally:
            server.terminate()
            server.wait(30)


def _answers(uri: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{uri}/api/v1/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def check_server(client: Container, assets: Path, uri: str) -> None:
    """Refuse the server at ``uri`` (``client``) if it could not store a run whose HDF5
    files are in ``assets``.

    Raises
    ------
    CatalogError
        One line naming the server, what is missing, and the setting of the server's
        catalog tree that adds it.
    """
    where = f"Tiled server {uri}"
    if not is_catalog_of_runs(client):
        raise CatalogError(
            f"{where}: its root is not a catalog of Bluesky runs; add "
            f"`specs: [{{name: {RUNS_SPEC['name']}, version: '{RUNS_SPEC['version']}'}}]` "
            "to the args of its catalog tree"
        )
    key = f"{PROBE_PREFIX}{uuid.uuid4().hex[:12]}"
    log.info("checking that %s can store runs (node %s, file in %s)", where, key, assets)
    file = _probe_file(assets / f"{key}.h5")
    try:
        node = client.create_container(key=key)
        _check_reads(
            node,
            file,
            f"{where} cannot read files in {assets}: add that folder, "
            "at the same path on the server's host, to the readable_storage of its "
            "catalog tree",
        )
        _check_tables(
            node,
            f"{where} has no SQL table store for the runs' event columns: add "
            "a sqlite:/// or postgresql:// URI to the writable_storage of its "
            "catalog tree",
        )
    finally:
        _remove(client, key, file)


def _probe_file(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            f[_DATASET] = np.arange(3, dtype=np.uint8)
    except OSError as err:
        raise CatalogError(f"assets folder {path.parent}: cannot write there ({err})") from None
    return path


def _check_reads(node: Container, file: Path, missing: str) -> None:
    """Register ``file`` as an external HDF5 array and read it back."""
    from tiled.structures.array import ArrayStructure
    from tiled.structures.data_source import Asset, DataSource, Management

    values = np.arange(3, dtype=np.uint8)
    source = DataSource(
        structure_family="array",
        mimetype="application/x-hdf5",
        structure=ArrayStructure.from_array(values),
        parameters={"dataset": _DATASET},
        assets=[
            Asset(data_uri=f"file://localhost{file}", is_directory=False, parameter="data_uris")
        ],
        management=Management.external,
    )
    try:
        read = node.new(structure_family="array", data_sources=[source], key="h5").read()
    except Exception as err:  # the server answers 500, whatever it could not do
        raise CatalogError(missing) from err
    if not np.array_equal(read, values):
        raise CatalogError(missing)


def _check_tables(node: Container, missing: str) -> None:
    """Append a row to a table of the kind that holds a run's event columns."""
    import pyarrow as pa

    try:
        table = node.create_appendable_table(pa.schema([("x", pa.int64())]), key="table")
        table.append_partition(0, pa.table({"x": [1]}))
    except Exception as err:
        raise CatalogError(missing) from err


def _remove(client: Container, key: str, file: Path) -> None:
    """Delete the probe node and file; a server that does not let us is logged."""
    try:
        client.delete_contents(key, recursive=True, external_only=False)
    except Exception as err:
        log.warning("could not delete the check's node %s from the Tiled server: %s", key, err)
    with contextlib.suppress(OSError):
        file.unlink()
