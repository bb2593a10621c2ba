"""--backend wireguard's configuration: the flags, the peer keys in --peer
and in the peers file, and the one-line errors (no key material in them),
through the real command line where it matters (exit 2, nothing made)."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from udpoverlay.cli import main
from udpoverlay.config import peersfile
from udpoverlay.config.options import build_config
from udpoverlay.errors import ConfigError
from udpoverlay.wgplane.pubkey import public_key_of
from udpoverlay.wireguard import generate

ROOT = Path(__file__).resolve().parents[3]
KEY_B = generate().public.to_base64()
KEY_C = generate().public.to_base64()
BASE = dict(subnet="198.19.1.0/24", network="198.19.0.0/16", public_ip="198.18.0.1",
            backend="wireguard", private_key_file="/etc/udpoverlay/wg.key")


def test_defaults_and_peer_keys():
    o = build_config(**BASE, peers=[f"198.18.0.2=198.19.2.0/24,public-key={KEY_B},keepalive=25",
                                    f"bob.example:51900=198.19.3.0/24,public-key={KEY_C},"
                                    f"preshared-key-file=/etc/udpoverlay/bob.psk"])
    assert o.port == 51820 and o.backend == "wireguard"
    assert o.private_key_file == "/etc/udpoverlay/wg.key"
    (p,) = o.peers                        # the name is resolved later
    assert p.public_key == KEY_B and p.keepalive == 25 and p.port == 51820
    spec = o.peer_specs[1]
    assert (spec.public_key, spec.preshared_key_file, spec.port) == (
        KEY_C, "/etc/udpoverlay/bob.psk", 51900)


@pytest.mark.parametrize("change, needle", [
    (dict(peers=["198.18.0.2=198.19.2.0/24"]), "needs the peer's public key"),
    (dict(peers=["198.18.0.2=198.19.2.0/24,public-key=abc"]), "not valid base64"),
    (dict(peers=["198.18.0.2=198.19.2.0/24,public-key=" + base64.b64encode(bytes(16)).decode()]),
     "decodes to 16 bytes, want 32"),
    (dict(peers=["198.18.0.2=198.19.2.0/24,public-key=" + base64.b64encode(bytes(32)).decode()]),
     "all-zero"),
    (dict(peers=[f"198.18.0.2=198.19.2.0/24,public-key={KEY_B}",
                 f"198.18.0.3=198.19.3.0/24,public-key={KEY_B}"]), "same public key"),
    (dict(private_key_file=None), "needs --private-key-file"),
    (dict(queues=2), "--queues does not apply"),
    (dict(threads=True), "--threads does not apply"),
    (dict(io_mode="io_uring"), "--io io_uring does not apply"),
    (dict(busy_poll_us=10), "--busy-poll-us does not apply"),
    (dict(backend="udp", private_key_file=None,
          peers=[f"198.18.0.2=198.19.2.0/24,public-key={KEY_B}"]),
     "only apply to --backend wireguard"),
    (dict(backend="udp"), "--private-key-file only applies"),
])
def test_refused_in_one_line(change, needle):
    given = {**BASE, "peers": [f"198.18.0.2=198.19.2.0/24,public-key={KEY_B}"], **change}
    with pytest.raises(ConfigError, match=needle) as ei:
        build_config(**given)
    assert "\n" not in str(ei.value)


def test_a_private_key_pasted_as_public_key_is_never_repeated():
    secret = generate().secret_base64()
    for spec in (f"198.18.0.2=198.19.2.0/24,public-key={secret[:-2]}!!",
                 f"198.18.0.2=198.19.2.0/24,public_key={secret}"):     # a misspelt option
        with pytest.raises(ConfigError) as ei:
            build_config(**{**BASE, "peers": [spec]})
        assert secret[:20] not in str(ei.value), str(ei.value)


def test_peer_options_from_the_environment_stay_with_their_peer():
    from udpoverlay.cli import parse_args, run_options
    env = {"FLANNELD_PEER": f"198.18.0.2=198.19.2.0/24,public-key={KEY_B},keepalive=5,"
                            f"198.18.0.3=198.19.3.0/24,public-key={KEY_C},"
                            f"preshared-key-file=/etc/udpoverlay/c.psk",
           "FLANNELD_BACKEND": "wireguard", "FLANNELD_PRIVATE_KEY_FILE": "/etc/wg.key"}
    args, _ = parse_args(["run", "--subnet", "198.19.1.0/24", "--network", "198.19.0.0/16"], env)
    o = run_options(args)
    assert [(p.public_key, p.keepalive, p.preshared_key_file) for p in o.peers] == [
        (KEY_B, 5, None), (KEY_C, None, "/etc/udpoverlay/c.psk")]
    assert o.private_key_file == "/etc/wg.key"


def test_cluster_mode_takes_the_backend_from_etcd_not_the_flag():
    with pytest.raises(ConfigError, match="come from etcd"):
        from udpoverlay.config.options import build_cluster_options
        build_cluster_options(endpoints="http://198.18.0.254:2379", backend="wireguard")


def test_peers_file_keys():
    text = f'''
[[peer]]
host = "198.18.0.2"
subnet = "198.19.2.0/24"
public-key = "{KEY_B}"
preshared-key-file = "/etc/udpoverlay/b.psk"
keepalive = 10
'''
    (spec,) = peersfile.parse(text, "peers.toml", 51820)
    assert (spec.public_key, spec.preshared_key_file, spec.keepalive) == (
        KEY_B, "/etc/udpoverlay/b.psk", 10)
    with pytest.raises(ConfigError, match=r"peers.toml:2: peer 1 \(198.18.0.2\): public-key is "
                                          r"not valid base64"):
        peersfile.parse(text.replace(KEY_B, "no!pe"), "peers.toml", 51820)


def test_pubkey_like_wg_pubkey(tmp_path):
    key = generate()
    out = io.StringIO()
    public_key_of(None, io.BytesIO(key.secret_base64().encode() + b"\n"), out)
    assert out.getvalue() == key.public.to_base64() + "\n"
    path = tmp_path / "wg.key"
    path.write_text(key.secret_base64() + "\n")
    os.chmod(path, 0o600)
    out = io.StringIO()
    public_key_of(str(path), io.BytesIO(), out)
    assert out.getvalue() == key.public.to_base64() + "\n"
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match="gives group or others access") as ei:
        public_key_of(str(path), io.BytesIO(), out)
    assert key.secret_base64() not in str(ei.value)
    with pytest.raises(ConfigError, match="not valid base64"):
        public_key_of(None, io.BytesIO(b"not a key"), out)
    with pytest.raises(ConfigError, match="no private key"):
        public_key_of(None, io.BytesIO(b""), out)


def test_pubkey_subcommand_and_run_errors_exit_2_in_one_line(tmp_path):
    key = generate()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "udpoverlay", "pubkey"], input=key.secret_base64(),
                       capture_output=True, text=True, env=env, timeout=30, cwd=str(ROOT))
    assert (r.returncode, r.stdout.strip()) == (0, key.public.to_base64()), r.stderr
    r = subprocess.run([sys.executable, "-m", "udpoverlay", "pubkey"], input="garbage",
                       capture_output=True, text=True, env=env, timeout=30, cwd=str(ROOT))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_run_without_a_peer_key_exits_2_before_anything(capsys):
    code = main(["run", "--subnet", "198.19.1.0/24", "--network", "198.19.0.0/16",
                 "--backend", "wireguard", "--private-key-file", "/nonexistent/wg.key",
                 "--peer", "198.18.0.2=198.19.2.0/24"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "public key" in err
