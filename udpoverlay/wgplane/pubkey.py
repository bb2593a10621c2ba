"""`udpoverlay pubkey`: the public key of a private key, as `wg pubkey`
prints it; the key from standard input or from --private-key-file (under
the daemon's file rules: a regular file of this user's, no group or other
access; never created here). Errors are one line without key material."""

from __future__ import annotations

import os
from typing import BinaryIO, TextIO

from udpoverlay.errors import ConfigError
from udpoverlay.wireguard.keys import load_private_key, parse_private_key

__all__ = ["public_key_of", "MAX_INPUT"]

MAX_INPUT = 4096        # a key line is 45 bytes


def public_key_of(private_key_file: str | None, stdin: BinaryIO, stdout: TextIO) -> None:
    """Print the public key; ConfigError (one line, no key material) if the
    key or its file is unusable."""
    if private_key_file:
        key = load_private_key(private_key_file, create=False, owner_uid=os.geteuid())
    else:
        data = stdin.read(MAX_INPUT + 1)
        if len(data) > MAX_INPUT:
            raise ConfigError("pubkey: standard input is too long to be a private key")
        if not data.strip():
            raise ConfigError("pubkey: no private key on standard input (try: wg genkey | "
                              "udpoverlay pubkey)")
        key = parse_private_key(data, what="pubkey: the private key on standard input")
    print(key.public.to_base64(), file=stdout)
