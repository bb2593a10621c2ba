"""WireGuard (Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s) as a sans-I/O engine.

Layering: beside dataplane/ and cluster/; imports udpoverlay.errors only.

    keys       private/public/preshared keys, `wg genkey` format, key files
    primitives HASH, MAC, HMAC, KDF, AEAD as the protocol composes them
    messages   the four message layouts
    noise      the handshake (initiation, response) and transport keys
    cookie     MAC1/MAC2 and cookie replies (load protection)
    replay     the receive replay window
    transport  one data packet: pure (key, counter, bytes) functions
    session    a keypair and a peer's current/previous/next slots
    peer       per-peer state and timer rules
    transfer   the engine's transport half: data out and in, per packet or per run
    engine     the device: receive(), send(), tick() (handshakes, cookies, timers)
"""

from udpoverlay.wireguard.engine import RECEIVE_VERDICTS, Engine, PeerConfigError, Received, Tick
from udpoverlay.wireguard.keys import (
    BadKeyError,
    KeyFileError,
    PresharedKey,
    PrivateKey,
    PublicKey,
    generate,
    load_preshared_key,
    load_private_key,
    parse_preshared_key,
    parse_private_key,
    parse_public_key,
    public_of,
)
from udpoverlay.wireguard.peer import Peer

__all__ = ["Engine", "Received", "Tick", "Peer", "PeerConfigError", "RECEIVE_VERDICTS",
           "PrivateKey", "PublicKey", "PresharedKey", "BadKeyError", "KeyFileError", "generate",
           "public_of", "parse_public_key", "parse_private_key", "parse_preshared_key",
           "load_private_key", "load_preshared_key"]
