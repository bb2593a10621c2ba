"""subnet.env: flannel's format, atomic replacement, tolerant reading."""

from __future__ import annotations

import ipaddress
import os
import stat
import threading

import pytest

from udpoverlay.cluster.subnetenv import previous_subnet, read_subnet_env, write_subnet_env

N = ipaddress.IPv4Network
FLANNEL_FILE = ("FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET=198.19.1.1/24\n"
                "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n")


def test_write_is_flannels_format_and_creates_the_directory(tmp_path):
    path = tmp_path / "run" / "flannel" / "subnet.env"
    write_subnet_env(path, N("198.19.0.0/16"), N("198.19.1.0/24"), 1472)
    assert path.read_text() == FLANNEL_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == ["subnet.env"]   # no temp file left behind
    write_subnet_env(str(path), N("198.19.0.0/16"), N("198.19.0.64/26"), 8951, ipmasq=False)
    assert path.read_text() == ("FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET=198.19.0.65/26\n"
                                "FLANNEL_MTU=8951\nFLANNEL_IPMASQ=false\n")


def test_write_keeps_an_operators_permissions(tmp_path):
    path = tmp_path / "subnet.env"
    path.write_text("old")
    path.chmod(0o600)
    write_subnet_env(path, N("198.19.0.0/16"), N("198.19.1.0/24"), 1472)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_readers_never_see_a_partial_file(tmp_path):
    path = tmp_path / "subnet.env"
    write_subnet_env(path, N("198.19.0.0/16"), N("198.19.1.0/24"), 1472)
    seen, stop = set(), threading.Event()

    def reader():
        while not stop.is_set():
            seen.add(path.read_text())
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(200):
            write_subnet_env(path, N("198.19.0.0/16"), N(f"198.19.{i % 2 + 1}.0/24"), 1472)
    finally:
        stop.set()
        thread.join(5)
    assert seen <= {FLANNEL_FILE, FLANNEL_FILE.replace("198.19.1.1", "198.19.2.1")}


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "subnet.env"
    path.write_text(FLANNEL_FILE)

    def broken(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        write_subnet_env(path, N("198.19.0.0/16"), N("198.19.2.0/24"), 1472)
    assert path.read_text() == FLANNEL_FILE and os.listdir(tmp_path) == ["subnet.env"]


def test_read_and_previous_subnet(tmp_path):
    path = tmp_path / "subnet.env"
    assert read_subnet_env(path) is None and previous_subnet(path) is None
    path.write_text(FLANNEL_FILE)
    assert read_subnet_env(path) == {"FLANNEL_NETWORK": "198.19.0.0/16",
                                     "FLANNEL_SUBNET": "198.19.1.1/24",
                                     "FLANNEL_MTU": "1472", "FLANNEL_IPMASQ": "true"}
    assert previous_subnet(path) == N("198.19.1.0/24")
    path.write_text('# written by hand\nexport FLANNEL_SUBNET="198.19.7.1/24"\n\n')
    assert previous_subnet(path) == N("198.19.7.0/24")


@pytest.mark.parametrize("content", [
    b"FLANNEL_SUBNET", b"garbage line\nFLANNEL_SUBNET=198.19.1.1/24\n", b"\xff\xfe\x00",
    b"FLANNEL_SUBNET=198.19.1.1\n", b"FLANNEL_SUBNET=not-an-ip/24\n", b"FLANNEL_MTU=1472\n",
    b"FLANNEL_SUBNET=fd00::1/64\n", b"X=" + b"y" * 70000,
])
def test_garbled_files_mean_no_previous_subnet(tmp_path, content):
    path = tmp_path / "subnet.env"
    path.write_bytes(content)
    assert previous_subnet(path) is None


def test_unreadable_path_is_none(tmp_path):
    assert read_subnet_env(tmp_path) is None    # a directory
