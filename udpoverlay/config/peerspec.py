"""A static peer as configured: the `--peer` syntax parsed into a PeerSpec,
and the checks in the order they can be made: the shape of a HOST (before
any lookup), what holds for the specs without addresses (subnets), and what
holds once addresses are known (not ours, not twice). options.py runs them
on the flags, static/peers.py again on the merged flags + peers file and on
every resolution. ConfigError, one line.

bad_peer_address() is the one judgement of an address as a peer's, for
both modes: a literal --peer or peers-file HOST, what a peer name resolves
to (static/names.py), a lease's PublicIP (cluster/validate.py). Refused:
0.0.0.0 (the kernel delivers it to this host), loopback (a local socket,
any user's, would receive the pods' packets and could inject as that peer),
multicast and broadcast (the pods' packets sprayed onto the LAN), class E,
the underlay network's broadcast address when it is known, and our own
addresses. (Loopback is accepted only when our own underlay address is
loopback too: a daemon on 127.0.0.1, as in tests, can reach nothing else.)
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Iterable

from udpoverlay.config import values
from udpoverlay.config.defaults import MAX_KEEPALIVE
from udpoverlay.errors import ConfigError
from udpoverlay.peer import Peer, PeerSpec

__all__ = ["bad_peer_address", "check_literal", "check_host", "check_peer_specs",
           "check_peer_addresses", "check_keepalive", "check_public_key", "check_key_path",
           "parse_peer_spec", "parse_peer", "spec_of"]

_CLASS_E = ipaddress.IPv4Network("240.0.0.0/4")     # 255.255.255.255 included
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def bad_peer_address(addr: ipaddress.IPv4Address,
                     underlay: ipaddress.IPv4Network | None = None,
                     own: Iterable[ipaddress.IPv4Address | None] = ()) -> str | None:
    """Why `addr` cannot be a peer's underlay address (None: it can).
    underlay: our underlay network, if known (its broadcast address);
    own: our own addresses (--public-ip, the bound address). A loopback
    peer is accepted only when our own underlay is loopback as well (a
    one-host set-up, tests: nothing can leave the host then)."""
    own = tuple(own)
    if addr.is_unspecified:
        return "is the unspecified address (0.0.0.0)"
    if addr.is_loopback and not any(a is not None and a.is_loopback for a in own):
        return "is a loopback address"      # (fine when our own underlay is loopback too)
    if addr.is_multicast:
        return "is a multicast address"
    if addr in _CLASS_E:
        return "is a broadcast or reserved (class E) address"
    if underlay is not None and underlay.prefixlen < 31 and addr == underlay.broadcast_address:
        return f"is the broadcast address of the underlay network {underlay}"
    if addr in own:
        return "is our own address"
    return None


def check_literal(spec: PeerSpec, underlay: ipaddress.IPv4Network | None = None,
                  own: Iterable[ipaddress.IPv4Address | None] = ()) -> None:
    """A peer given by address (not by name) at an address bad_peer_address
    refuses: ConfigError naming the peer and where it was given."""
    if spec.literal is None:
        return
    why = bad_peer_address(spec.literal, underlay, own)
    if why is not None:
        raise ConfigError(f"peer {spec.host}={spec.subnet} ({spec.origin}): {spec.host} {why}, "
                          f"not a peer's address")


def check_host(host: str, what: str) -> str:
    """A peer's HOST: an IPv4 literal or a DNS name (checked for shape only;
    it is resolved later)."""
    host = str(host).strip()
    host = host[:-1] if host.endswith(".") else host    # a fully qualified name
    labels = host.split(".")
    if all(label.isdigit() for label in labels):     # all-numeric: meant as an address
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(f"{what}: bad IPv4 address {host!r}") from None
        return host
    if not host or len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ConfigError(f"{what}: bad host name {host!r} (a DNS name or an IPv4 address)")
    return host.lower()


def check_peer_specs(specs, subnet: ipaddress.IPv4Network, network: ipaddress.IPv4Network,
                     backend: str) -> None:
    """What holds for configured peers before any name is resolved: each
    subnet inside the network, none overlapping ours or another's, vtep-mac
    only for vxlan. ConfigError naming the peer(s)."""
    for p in specs:
        if not p.subnet.subnet_of(network):
            raise ConfigError(f"peer {p.host}={p.subnet}: subnet outside --network {network}")
        if p.subnet.overlaps(subnet):
            raise ConfigError(f"peer {p.host}={p.subnet}: overlaps our --subnet {subnet}")
    ordered = sorted(specs, key=lambda p: (int(p.subnet.network_address), p.subnet.prefixlen))
    for a, b in zip(ordered, ordered[1:]):
        if a.subnet.overlaps(b.subnet):
            raise ConfigError(f"peer subnets overlap: {a.host}={a.subnet} ({a.origin}) "
                              f"and {b.host}={b.subnet} ({b.origin})")
    if backend != "vxlan" and any(p.vtep_mac for p in specs):
        raise ConfigError("vtep-mac in --peer only applies to --backend vxlan")
    if backend != "wireguard":
        for p in specs:
            if p.public_key or p.preshared_key_file:
                raise ConfigError(f"peer {p.host}={p.subnet} ({p.origin}): public-key and "
                                  f"preshared-key-file only apply to --backend wireguard")
        return
    keys: dict[str, PeerSpec] = {}
    for p in specs:
        if not p.public_key:
            raise ConfigError(f"peer {p.host}={p.subnet} ({p.origin}): --backend wireguard "
                              f"needs the peer's public key (public-key=BASE64, what `wg "
                              f"pubkey` or `udpoverlay pubkey` prints on that host)")
        if p.public_key in keys:
            q = keys[p.public_key]
            raise ConfigError(f"peers {q.host}={q.subnet} ({q.origin}) and {p.host}={p.subnet} "
                              f"({p.origin}) have the same public key")
        keys[p.public_key] = p


def check_peer_addresses(peers, public_ip, backend: str) -> None:
    """What holds once addresses are known: no peer at our own --public-ip,
    no address twice (udp mode tells peers behind one NAT apart by port, so
    there it is address and port)."""
    seen: dict[tuple, Peer] = {}
    for p in peers:
        if public_ip is not None and p.public_ip == public_ip:
            raise ConfigError(f"peer {p.host or p.public_ip}={p.subnet}: that is our own "
                              f"--public-ip")
        key = (p.public_ip, p.port) if backend in ("udp", "wireguard") else (p.public_ip,)
        if key in seen:
            raise ConfigError(f"peer {':'.join(map(str, key))} given twice "
                              f"({seen[key].subnet} and {p.subnet})")
        seen[key] = p


def check_keepalive(value, what: str) -> int:
    return values.integer(value, what, 0, MAX_KEEPALIVE)


def check_public_key(text, what: str) -> str:
    """A WireGuard public key's shape: standard base64 of 32 bytes, not all
    zero (the WireGuard plane parses it again and refuses low-order points).
    The message never repeats the text: a private key pasted here by
    mistake must not reach a log."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{what}: public-key is empty")
    try:
        raw = base64.b64decode(text.strip().encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ConfigError(f"{what}: public-key is not valid base64 (want 44 characters, "
                          f"as `wg pubkey` prints)") from None
    if len(raw) != 32:
        raise ConfigError(f"{what}: public-key decodes to {len(raw)} bytes, want 32")
    if raw == bytes(32):
        raise ConfigError(f"{what}: public-key is the all-zero key")
    return base64.b64encode(raw).decode("ascii")


def check_key_path(text, what: str) -> str:
    """A key file's path (checked for shape only: read at start)."""
    if not isinstance(text, str) or not text.strip() or "\0" in text:
        raise ConfigError(f"{what}: preshared-key-file needs a path")
    return text.strip()


def parse_peer_spec(text: str, default_port: int) -> PeerSpec:
    """`HOST[:PORT]=SUBNET[,vtep-mac=MAC][,keepalive=N]` -> PeerSpec (HOST:
    a DNS name or an IPv4 address); ConfigError if bad."""
    what = f"--peer {text!r}"
    if "=" not in text:
        raise ConfigError(f"{what}: expected HOST[:PORT]=SUBNET (e.g. PUBLIC_IP=SUBNET)")
    left, right = text.split("=", 1)
    left = left.strip()
    if ":" in left:
        host, port_text = left.rsplit(":", 1)
        port = values.port(port_text, what)
    else:
        host, port = left, default_port
    host = check_host(host, what)
    parts = right.split(",")
    subnet = values.net(parts[0], what)
    mac, keepalive, public_key, psk_file = None, None, None, None
    for opt in parts[1:]:
        key, _, val = opt.partition("=")
        key = key.strip()
        if key == "vtep-mac" and val:
            mac = values.mac(val, what)
        elif key == "keepalive" and val:
            keepalive = check_keepalive(val, what + " keepalive")
        elif key == "public-key":
            public_key = check_public_key(val, f"--peer {host}={subnet}")
        elif key == "preshared-key-file":
            psk_file = check_key_path(val, f"--peer {host}={subnet}")
        else:
            # (not the option's text: it could be a misspelt key with a secret)
            raise ConfigError(f"--peer {host}={subnet}: unknown option {key!r} (vtep-mac=MAC, "
                              f"keepalive=SECONDS, public-key=BASE64, preshared-key-file=PATH)")
    return PeerSpec(host=host, port=port, subnet=subnet, vtep_mac=mac, keepalive=keepalive,
                    public_key=public_key, preshared_key_file=psk_file)


def parse_peer(text: str, default_port: int) -> Peer:
    """`PUBLIC_IP[:PORT]=SUBNET[,...]` -> Peer; ConfigError if bad or a name."""
    spec = parse_peer_spec(text, default_port)
    if spec.literal is None:
        raise ConfigError(f"--peer {text!r}: {spec.host!r} is a name; resolve it first")
    return spec.resolved(spec.literal)


def spec_of(p: Peer | PeerSpec | str, port: int) -> PeerSpec:
    if isinstance(p, PeerSpec):
        return p
    if isinstance(p, Peer):
        return PeerSpec(str(p.public_ip), p.port, p.subnet, p.vtep_mac, p.keepalive,
                        public_key=p.public_key, preshared_key_file=p.preshared_key_file)
    return parse_peer_spec(p, port)
