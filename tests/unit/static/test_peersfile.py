"""The peers file: TOML in, PeerSpecs out, every problem one line naming
the file, the peer's line and the peer."""

from __future__ import annotations

import pytest

from udpoverlay.config import peersfile
from udpoverlay.errors import ConfigError

GOOD = """\
# laptops
keepalive = 25

[[peer]]
host = "Bob.Example.net"
subnet = "198.19.2.0/24"

[[peer]]
host = "198.18.0.3"
port = 9000
subnet = "198.19.3.0/24"
vtep-mac = "02:00:00:00:00:03"
keepalive = 0
"""


def test_peers_with_names_ports_macs_and_keepalives():
    specs = peersfile.parse(GOOD, "peers.toml", 8285)
    assert [(s.host, s.port, str(s.subnet), s.vtep_mac, s.keepalive, s.origin)
            for s in specs] == [
        ("bob.example.net", 8285, "198.19.2.0/24", None, 25, "peers.toml:4"),
        ("198.18.0.3", 9000, "198.19.3.0/24", bytes.fromhex("020000000003"), 0,
         "peers.toml:8")]
    assert specs[0].literal is None and str(specs[1].literal) == "198.18.0.3"


def test_empty_file_is_no_peers(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("")
    assert peersfile.load(str(path), 8285) == []


@pytest.mark.parametrize("text, needle", [
    ("[[peer]\nhost = 1", "p.toml: not valid TOML"),
    ("peers = []", "unknown top-level key 'peers'"),
    ("peer = 3", "must be [[peer]] tables"),
    ("keepalive = -1", "keepalive"),
    ("keepalive = 1.5", "whole seconds"),
    ("keepalive = true", "whole seconds"),
    ("[[peer]]\nsubnet = '198.19.2.0/24'", "p.toml:1: peer 1: host is required"),
    ("[[peer]]\nhost = 'bob'", "p.toml:1: peer 1 (bob): subnet is required"),
    ("\n\n[[peer]]\nhost = 'bob'\nsubnet = '198.19.2.0/24'\ncolour = 'red'",
     "p.toml:3: peer 1 (bob): unknown key 'colour'"),
    ("[[peer]]\nhost = 'bob'\nsubnet = '198.19.2.0/24'\n[[peer]]\nhost = 'b d'\n"
     "subnet = '198.19.3.0/24'", "p.toml:4: peer 2 (b d): bad host name"),
    ("[[peer]]\nhost = 'bob'\nsubnet = '198.19.2.1/24'", "host bits"),
    ("[[peer]]\nhost = 'bob'\nsubnet = '198.19.2.0/24'\nport = 70000", "bad port"),
    ("[[peer]]\nhost = 'bob'\nsubnet = '198.19.2.0/24'\nport = '80'", "port must be a number"),
    ("[[peer]]\nhost = 'bob'\nsubnet = '198.19.2.0/24'\nvtep-mac = 'zz'", "bad MAC"),
    ("[[peer]]\nhost = 'bob'\nsubnet = '198.19.2.0/24'\nvtep-mac = 1", "vtep-mac must be"),
    ("[[peer]]\nhost = 'bob'\nsubnet = '198.19.2.0/24'\nkeepalive = 4000", "out of range"),
    ("[[peer]]\nhost = 7\nsubnet = '198.19.2.0/24'", "host is required"),
])
def test_bad_content_is_one_line_naming_file_line_and_peer(text, needle):
    with pytest.raises(ConfigError) as ei:
        peersfile.parse(text, "p.toml", 8285)
    assert needle in str(ei.value) and "\n" not in str(ei.value)


def test_unreadable_huge_and_binary_files(tmp_path):
    with pytest.raises(ConfigError, match="No such file"):
        peersfile.load(str(tmp_path / "missing.toml"), 8285)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (peersfile.MAX_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        peersfile.load(str(big), 8285)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"host = '\xff'")
    with pytest.raises(ConfigError, match="not UTF-8"):
        peersfile.load(str(binary), 8285)
