"""Keys: `wg genkey` format, key-file rules, and secrets that never print."""

from __future__ import annotations

import base64
import os
import pickle
import shutil
import stat
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tests.support.requirements import require
from udpoverlay.errors import ConfigError
from udpoverlay.wireguard import keys
from udpoverlay.wireguard.keys import (
    BadKeyError,
    KeyFileError,
    PresharedKey,
    generate,
    load_private_key,
    parse_preshared_key,
    parse_private_key,
    parse_public_key,
    public_of,
)


def test_generate_is_clamped_and_matches_pyca():
    key = generate()
    raw = base64.b64decode(key.secret_base64())
    assert len(raw) == 32 and raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40
    expect = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    assert public_of(key).raw == expect
    assert parse_private_key(key.secret_base64()) == key
    assert parse_public_key(public_of(key).to_base64()) == public_of(key)


def test_public_key_agrees_with_wg_pubkey():
    require(shutil.which("wg") is not None, "needs wg (Debian package wireguard-tools)")
    key = generate()
    out = subprocess.run(["wg", "pubkey"], input=key.secret_base64() + "\n", capture_output=True,
                         text=True, timeout=10, check=True).stdout.strip()
    assert out == public_of(key).to_base64()


@pytest.mark.parametrize("text, reason", [
    ("", "0 bytes"),
    ("not base64 at all!", "not valid base64"),
    (base64.b64encode(b"x" * 31).decode(), "31 bytes"),
    (base64.b64encode(b"x" * 33).decode(), "33 bytes"),
    ("é" * 44, "non-ASCII"),
])
def test_bad_public_keys_say_why(text, reason):
    with pytest.raises(BadKeyError, match=reason):
        parse_public_key(text)


def test_all_zero_public_key_refused():
    with pytest.raises(BadKeyError, match="all-zero"):
        parse_public_key(base64.b64encode(bytes(32)))


def test_errors_are_config_errors():
    assert issubclass(KeyFileError, ConfigError) and issubclass(BadKeyError, ConfigError)


def test_private_key_never_in_text():
    key = generate()
    secret = key.secret_base64()
    raw = base64.b64decode(secret)
    for text in (repr(key), str(key), f"{key}", repr([key]), repr({"k": key})):
        assert secret not in text and raw.hex() not in text
        assert public_of(key).to_base64() in text  # the public hint is there instead
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(TypeError):
        hash(key)


def test_preshared_key_never_in_text():
    raw = os.urandom(32)
    psk = parse_preshared_key(base64.b64encode(raw))
    assert psk == PresharedKey(raw)
    for text in (repr(psk), str(psk)):
        assert base64.b64encode(raw).decode() not in text and raw.hex() not in text
    with pytest.raises(TypeError):
        pickle.dumps(psk)


def test_bad_private_key_text_is_not_echoed():
    almost = generate().secret_base64()[:-2] + "!!"
    with pytest.raises(BadKeyError) as info:
        parse_private_key(almost)
    assert almost not in str(info.value) and almost[:20] not in str(info.value)


# -- key files ------------------------------------------------------------

def test_missing_file_is_created_0600_and_reread(tmp_path):
    path = tmp_path / "wgkey"
    key = load_private_key(str(path))
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert path.read_text() == key.secret_base64() + "\n"
    assert load_private_key(str(path)) == key
    assert [p.name for p in tmp_path.iterdir()] == ["wgkey"]  # no temp file left


def test_missing_file_not_created_when_told_not_to(tmp_path):
    with pytest.raises(KeyFileError, match="cannot open"):
        load_private_key(str(tmp_path / "absent"), create=False)


def test_creation_error_is_one_line(tmp_path):
    with pytest.raises(KeyFileError, match="cannot create"):
        load_private_key(str(tmp_path / "no-such-dir" / "wgkey"))


def _write(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666, 0o660])
def test_group_or_world_access_refused(tmp_path, mode):
    path = tmp_path / "wgkey"
    key = generate()
    _write(path, key.secret_base64() + "\n", mode)
    with pytest.raises(KeyFileError) as info:
        load_private_key(str(path), owner_uid=os.geteuid())
    text = str(info.value)
    assert str(path) in text and f"{mode:04o}" in text and "chmod 600" in text
    assert key.secret_base64() not in text


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_modes_accepted(tmp_path, mode):
    path = tmp_path / "wgkey"
    key = generate()
    _write(path, key.secret_base64() + "\n", mode)
    assert load_private_key(str(path), owner_uid=os.geteuid()) == key


def test_not_owned_by_root_refused(tmp_path):
    require(os.geteuid() == 0, "needs root (chown)")
    path = tmp_path / "wgkey"
    key = generate()
    _write(path, key.secret_base64())
    os.chown(path, 4242, 4242)
    with pytest.raises(KeyFileError, match="owned by uid 4242") as info:
        load_private_key(str(path))
    assert key.secret_base64() not in str(info.value)


@pytest.mark.parametrize("content, reason", [
    ("", "0 bytes"),
    ("\n", "0 bytes"),
    ("hello world", "not valid base64"),
    (base64.b64encode(os.urandom(16)).decode(), "16 bytes"),
    ("x" * 5000, "too large"),
])
def test_malformed_content_refused_without_echo(tmp_path, content, reason):
    path = tmp_path / "wgkey"
    _write(path, content)
    with pytest.raises(KeyFileError, match=reason) as info:
        load_private_key(str(path), owner_uid=os.geteuid())
    assert str(path) in str(info.value)
    if content.strip():
        assert content.strip()[:8] not in str(info.value)


def test_directory_refused(tmp_path):
    d = tmp_path / "wgkey"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError):
        load_private_key(str(d), owner_uid=os.geteuid())


def test_existing_file_is_never_overwritten(tmp_path, monkeypatch):
    """A creator that loses the race uses the winner's key."""
    path = tmp_path / "wgkey"
    winner = generate()
    real_link = os.link

    def racing_link(src, dst):
        _write(path, winner.secret_base64() + "\n")
        return real_link(src, dst)

    monkeypatch.setattr(keys.os, "link", racing_link)
    assert load_private_key(str(path), owner_uid=os.geteuid()) == winner
    assert [p.name for p in tmp_path.iterdir()] == ["wgkey"]
