"""WireGuard's protocol constants (whitepaper section 6.1) and this
engine's own limits. Times are seconds on the caller's monotonic clock."""

from __future__ import annotations

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
REKEY_TIMEOUT_JITTER_MAX = 0.333  # added to each retransmission: peers do not retry in lockstep
KEEPALIVE_TIMEOUT = 10.0
# A peer's initiations faster than this are dropped (wireguard-go: 50/s).
HANDSHAKE_INITIATION_RATE = 1.0 / 50
# Receiving on an initiator-made keypair this old starts a handshake, so a
# quiet sender rekeys before REJECT_AFTER_TIME (wireguard-go's rule).
REKEY_ON_RECEIVE_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
# Without a new handshake all key material is erased after this long.
ZERO_KEYS_AFTER = REJECT_AFTER_TIME * 3

# Engine limits (ours, not the protocol's)
QUEUE_LIMIT = 128  # packets held per peer while no session exists (wireguard-go's staged queue)
