"""Start-up errors about the TUN device name their real cause, in one line:
a process without CAP_NET_ADMIN (root with it dropped from the bounding set,
as in a container without NET_ADMIN) is told about root/CAP_NET_ADMIN, a
second instance on the same device is told the device is in use (the first
keeps running; its control socket, the first thing a daemon opens,
tells)."""

from __future__ import annotations

import shutil
import sys

from tests.support.overlay import NETWORK, subnet_of, underlay_of
from tests.support.requirements import require

NO_NET_ADMIN = ["setpriv", "--bounding-set=-net_admin"]


def _run_args(i: int, port: int) -> list[str]:
    return [sys.executable, "-m", "udpoverlay", "run", "--public-ip", underlay_of(i),
            "--port", str(port), "--subnet", subnet_of(i), "--network", NETWORK]


def test_missing_cap_net_admin_is_named(overlay2):
    require(shutil.which("setpriv") is not None, "needs setpriv (util-linux)")
    ov = overlay2
    r = ov.run(ov.hosts[1], [*NO_NET_ADMIN, *_run_args(1, 18285)], timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr
    # after the INFO lines of the start and the cut-short start-up, one error
    assert lines[-1] == ("udpoverlay: error: cannot create TUN device 'udpov0': permission "
                         "denied: root or CAP_NET_ADMIN is needed"), r.stderr
    assert [line for line in lines if "error" in line.lower()] == lines[-1:], r.stderr
    assert not ov.link_exists(ov.hosts[1])


def test_second_instance_is_told_the_device_is_in_use(overlay2):
    ov = overlay2
    ov.start(1)
    d = ov.launch(1, _run_args(1, 8286), wait=False)
    assert d.proc.wait(timeout=30) == 1
    err = d.stderr().strip().splitlines()
    # found at the control socket, opened before anything else
    assert err[-1].startswith("udpoverlay: error: TUN device 'udpov0' is in use: another "
                              "udpoverlay instance runs on it"), err
    assert ov.status(ov.hosts[1])["public_ip"] == underlay_of(1)   # the first one runs on
