"""WireGuard keys: Curve25519 private/public keys and preshared keys, in
`wg genkey` format (32 bytes, standard base64, one line).

Secrets never reach text: PrivateKey and PresharedKey print only a public
hint, and no error here quotes a key or a key file's contents. The key file
rules follow wg(8)'s and flannel's practice: owned by root, no group or
other bits, created 0600 when missing (atomically, so nobody ever reads a
half-written key).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import stat

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from udpoverlay.errors import ConfigError

__all__ = ["KEY_SIZE", "BadKeyError", "KeyFileError", "PublicKey", "PrivateKey", "PresharedKey",
           "generate", "public_of", "parse_public_key", "parse_private_key", "parse_preshared_key",
           "load_private_key", "load_preshared_key"]

KEY_SIZE = 32


class BadKeyError(ConfigError):
    """A key that cannot be used (bad base64, wrong length, low-order point)."""


class KeyFileError(BadKeyError):
    """A private key file that must not be used (permissions, owner, content)."""


def _decode(text: str | bytes, what: str) -> bytes:
    """Strict base64 of exactly 32 bytes; the error never repeats the text."""
    if isinstance(text, str):
        try:
            text = text.encode("ascii")
        except UnicodeEncodeError:
            raise BadKeyError(f"{what}: not base64 (non-ASCII characters)") from None
    text = text.strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadKeyError(f"{what}: not valid base64") from None
    if len(raw) != KEY_SIZE:
        raise BadKeyError(f"{what}: decodes to {len(raw)} bytes, want {KEY_SIZE}")
    return raw


class PublicKey:
    """A peer's static public key (not secret: printable, hashable)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_SIZE:
            raise BadKeyError(f"public key: {len(raw)} bytes, want {KEY_SIZE}")
        self.raw = bytes(raw)

    def to_base64(self) -> str:
        return base64.b64encode(self.raw).decode("ascii")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and self.raw == other.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __str__(self) -> str:
        return self.to_base64()

    def __repr__(self) -> str:
        return f"PublicKey({self.to_base64()!r})"


class PrivateKey:
    """Our static private key. Its text forms show only the public key."""

    __slots__ = ("_raw", "_key", "public")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_SIZE:
            raise BadKeyError(f"private key: {len(raw)} bytes, want {KEY_SIZE}")
        self._raw = bytes(raw)
        self._key = X25519PrivateKey.from_private_bytes(self._raw)
        self.public = PublicKey(self._key.public_key().public_bytes_raw())

    def exchange(self, peer_public: bytes) -> bytes:
        """X25519 with a peer's raw public key. ValueError on a low-order
        point (all-zero result), which callers turn into a typed error."""
        return self._key.exchange(X25519PublicKey.from_public_bytes(peer_public))

    def secret_base64(self) -> str:
        """The key in `wg genkey` format: only for writing the key file."""
        return base64.b64encode(self._raw).decode("ascii")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivateKey) and hmac.compare_digest(self._raw, other._raw)

    __hash__ = None  # type: ignore[assignment]  # secrets are not dict keys

    def __repr__(self) -> str:
        return f"PrivateKey(public={self.public.to_base64()!r})"

    __str__ = __repr__

    def __reduce__(self):  # never pickled into a log, a queue or a core dump file
        raise TypeError("PrivateKey cannot be pickled")


class PresharedKey:
    """The optional symmetric key mixed into the handshake (psk2)."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_SIZE:
            raise BadKeyError(f"preshared key: {len(raw)} bytes, want {KEY_SIZE}")
        self.raw = bytes(raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PresharedKey) and hmac.compare_digest(self.raw, other.raw)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "PresharedKey(<hidden>)"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("PresharedKey cannot be pickled")


# The all-zero PSK is what WireGuard mixes in when none is configured.
NO_PSK = b"\x00" * KEY_SIZE


def _clamp(raw: bytearray) -> bytes:
    # `wg genkey` writes clamped scalars; X25519 clamps anyway, so this only
    # makes our files byte-for-byte like wg's (same public key either way).
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return bytes(raw)


def generate() -> PrivateKey:
    return PrivateKey(_clamp(bytearray(os.urandom(KEY_SIZE))))


def public_of(key: PrivateKey) -> PublicKey:
    return key.public


def parse_public_key(text: str | bytes, what: str = "public key") -> PublicKey:
    raw = _decode(text, what)
    if raw == b"\x00" * KEY_SIZE:
        raise BadKeyError(f"{what}: the all-zero key is not a usable public key")
    return PublicKey(raw)


def parse_private_key(text: str | bytes, what: str = "private key") -> PrivateKey:
    return PrivateKey(_decode(text, what))


def parse_preshared_key(text: str | bytes, what: str = "preshared key") -> PresharedKey:
    return PresharedKey(_decode(text, what))


def _check_file(path: str, st: os.stat_result, owner_uid: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"wireguard key file {path}: not a regular file")
    if st.st_uid != owner_uid:
        raise KeyFileError(f"wireguard key file {path}: owned by uid {st.st_uid}, "
                           f"must be owned by uid {owner_uid}")
    if st.st_mode & 0o077:
        raise KeyFileError(f"wireguard key file {path}: mode {stat.S_IMODE(st.st_mode):04o} "
                           "gives group or others access; chmod 600 (or 400) it")


_MAX_FILE = 4096  # a key line is 45 bytes; anything far larger is not a key file


def _create(path: str) -> None:
    """Write a new key to a private temp file, then link(2) it into place:
    the name appears complete or not at all, and an existing file (another
    process won the race) is never overwritten."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask may have removed bits, never added: be exact
            os.write(fd, (generate().secret_base64() + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # someone else created it first: use theirs
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _read_secret(path: str, owner_uid: int) -> bytes:
    """A key file's bytes, checked on the open descriptor (what we check is
    what we read): a regular file, owned by owner_uid, no group/other bits."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise KeyFileError(f"wireguard key file {path}: cannot open: {exc.strerror}") from None
    try:
        _check_file(path, os.fstat(fd), owner_uid)
        data = os.read(fd, _MAX_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE:
        raise KeyFileError(f"wireguard key file {path}: too large to be a key file")
    return data


def load_preshared_key(path: str, owner_uid: int = 0) -> PresharedKey:
    """Read a preshared key file (`wg genpsk` format) under the private key
    file's rules; never created (both ends need the same one)."""
    data = _read_secret(path, owner_uid)
    try:
        return parse_preshared_key(data, what=f"wireguard key file {path}")
    except KeyFileError:
        raise
    except BadKeyError as exc:
        raise KeyFileError(str(exc)) from None


def load_private_key(path: str, create: bool = True, owner_uid: int = 0) -> PrivateKey:
    """Read (or first create) the private key file at path, refusing one
    that others may read or write, or that root does not own."""
    if create and not os.path.lexists(path):
        try:
            _create(path)
        except OSError as exc:
            raise KeyFileError(f"wireguard key file {path}: cannot create: {exc.strerror}") from None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise KeyFileError(f"wireguard key file {path}: cannot open: {exc.strerror}") from None
    try:
        # Checked on the open descriptor: what we check is what we read.
        _check_file(path, os.fstat(fd), owner_uid)
        data = os.read(fd, _MAX_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE:
        raise KeyFileError(f"wireguard key file {path}: too large to be a key file")
    try:
        return parse_private_key(data, what=f"wireguard key file {path}")
    except KeyFileError:
        raise
    except BadKeyError as exc:
        raise KeyFileError(str(exc)) from None
