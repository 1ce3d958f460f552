"""One pool over several hosts, the hosts being network namespaces on a bridge of their
own: the session (RunEngine, simulated detector, catalog) on one, a pool service on
each of two others, named ``gpu1`` and ``gpu2``.  Every PV Access packet crosses a veth
pair and the bridge; nothing leaves the machine.  Needs root (skipped, saying so,
elsewhere)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from pool_services import services, share_command

pytestmark = [pytest.mark.processes, pytest.mark.timeout(300)]

HERE = Path(__file__).resolve().parent
ROLES = ("session", "gpu1", "gpu2")
"""The hosts, in the order of their addresses (.2, .3, .4)."""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Host:
    namespace: str
    address: str
    link: str
    hostname: str

    def wrapper(self, addresses: list[str]) -> list[str]:
        """Run a command on this host: in its namespace, under its name, searching the
        others' addresses and its own (a pool's parent finds its workers by them)."""
        env = {
            "EPICS_PVA_ADDR_LIST": " ".join([self.address, *addresses]),
            "EPICS_PVA_AUTO_ADDR_LIST": "NO",
            "EPICS_PVAS_INTF_ADDR_LIST": self.address,
        }
        settings = [f"{key}={value}" for key, value in env.items()]
        rename = f'hostname {self.hostname} && exec "$@"'
        return ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "env", *settings,
                "sh", "-c", rename, "sh"]  # fmt: skip


@pytest.fixture(scope="module")
def hosts():
    """The session's host and two GPU hosts on one bridge, removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
        pytest.skip("network namespaces need root, ip and unshare")
    tag = f"{random.randrange(16**4):04x}"
    subnet = f"10.{random.randrange(200, 250)}.{random.randrange(256)}"
    switch = f"sw{tag}"
    made = [switch]
    ip("netns", "add", switch)
    try:
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        found = []
        for k, role in enumerate(ROLES):
            namespace, address, link = f"{role}{tag}", f"{subnet}.{k + 2}", f"e{tag}{k}"
            ip("netns", "add", namespace)
            made.append(namespace)
            ip("link", "add", f"v{tag}{k}", "type", "veth", "peer", "name", link)
            ip("link", "set", f"v{tag}{k}", "netns", switch)
            ip("link", "set", link, "netns", namespace)
            ip("-n", switch, "link", "set", f"v{tag}{k}", "master", "br0", "up")
            ip("-n", namespace, "addr", "add", f"{address}/24", "dev", link)
            ip("-n", namespace, "link", "set", link, "up")
            ip("-n", namespace, "link", "set", "lo", "up")
            found.append(Host(namespace, address, link, role))
        yield dict(zip(ROLES, found, strict=True))
    finally:
        for namespace in made:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def copy_model(folder: Path) -> Path:
    """The pipeline-only model (it returns its input), so CPU workers keep 1 kHz."""
    sys.path.insert(0, str(HERE.parent / "benchmarks"))
    from stream import copy_model as make

    return make(folder)


def fly_over_two_hosts(hosts, tmp_path, channel_prefix, side, rate, *drop: str) -> dict:
    """Pool services on gpu1 (worker 1) and gpu2 (worker 2), then a session on its own
    host flying ``side`` x ``side`` points at ``rate``; what the session printed."""
    model = copy_model(tmp_path)
    prefix, session = channel_prefix, hosts["session"]
    everyone = [h.address for h in hosts.values()]
    with services() as running:
        for k, role in enumerate(("gpu1", "gpu2"), start=1):
            host = hosts[role]
            command = share_command(
                model, f"{prefix}:image", f"{prefix}:inference", tmp_path / role, (k,), 2
            )
            others = [a for a in everyone if a != host.address]
            running.start(command, host.wrapper(others))
        others = [a for a in everyone if a != session.address]
        script = [sys.executable, str(HERE / "remote_session.py"), str(model), prefix, "2"]
        script += [str(side), str(rate), str(tmp_path / "session"), *drop]
        (tmp_path / "session").mkdir()
        done = subprocess.run(
            session.wrapper(others) + script, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, done.stderr[-3000:]
        alive = [service.poll() is None for service in running.running]
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "services_alive": alive}


def test_a_fly_scan_at_1_khz_over_two_hosts_keeps_every_frame_each_host_taking_half(
    hosts, tmp_path, channel_prefix
):
    outcome = fly_over_two_hosts(hosts, tmp_path, channel_prefix, 30, 1000)
    accounting = outcome["accounting"]
    assert outcome["error"] == "" and outcome["exit_status"] == "success"
    assert accounting["produced"] == accounting["stored"] == 900
    assert accounting["missed"] == accounting["not_in_time"] == accounting["dropped"] == 0
    assert outcome["hosts"] == {"1": "gpu1", "2": "gpu2"}
    assert sorted(accounting["workers"]) == ["1", "2"]
    for rows in accounting["workers"].values():
        assert abs(rows - 450) <= 0.05 * 450
    assert outcome["services_alive"] == [True, True]  # the session let go, no more


def test_a_host_that_drops_off_mid_scan_fails_the_scan_naming_it_and_the_run_keeps_counts(
    hosts, tmp_path, channel_prefix
):
    gpu2 = hosts["gpu2"]
    cut = f"ip -n {gpu2.namespace} link set {gpu2.link} down"
    outcome = fly_over_two_hosts(hosts, tmp_path, channel_prefix, 40, 200, "--drop", cut, "100")
    ip("-n", gpu2.namespace, "link", "set", gpu2.link, "up")
    assert outcome["error"].startswith("WorkerDiedError: worker 2 (host gpu2, pid ")
    assert "has published no status for" in outcome["error"]
    assert outcome["exit_status"] == "fail"
    accounting = outcome["accounting"]
    assert accounting["stored"] == accounting["inferred"] >= 100
    assert accounting["workers"]["1"] > 0 and accounting["produced"] > accounting["stored"]
