"""Reference twin, what both directions check and build: the IPv4 header
check, the flow hash, the VXLAN header and the ARP body. Mirrors
_fastpath/frames.pxi."""

from __future__ import annotations

from udpoverlay.dataplane.wire import BAD_HEADER, NOT_IPV4, OK, TOO_SHORT

BROADCAST = b"\xff" * 6
ARP_HDR = b"\0\x01\x08\x00\x06\x04\0"      # Ethernet/IPv4, sizes 6/4, opcode high byte


def check_ipv4(pkt) -> int:
    """Verdict for a buffer that should hold exactly one IPv4 packet."""
    n = len(pkt)
    if n < 20:
        return TOO_SHORT
    if pkt[0] >> 4 != 4:
        return NOT_IPV4
    ihl = (pkt[0] & 0x0F) * 4
    total = (pkt[2] << 8) | pkt[3]
    if ihl < 20 or total != n or ihl > total:
        return BAD_HEADER
    return OK


def flow_hash(pkt) -> int:
    """FNV-1a (32 bit) of the inner flow: addresses, protocol and, for an
    unfragmented TCP/UDP/SCTP packet, the ports. Picks the VXLAN source
    socket (RFC 7348 section 5) so that one flow keeps one underlay path.
    Caller guarantees a valid IPv4 header."""
    ihl = (pkt[0] & 0x0F) * 4
    h = 0x811C9DC5
    data = bytes(pkt[12:20]) + bytes(pkt[9:10])
    if pkt[9] in (6, 17, 132) and ((pkt[6] << 8) | pkt[7]) & 0x3FFF == 0 and len(pkt) >= ihl + 4:
        data += bytes(pkt[ihl:ihl + 4])
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def vxlan_hdr(vni: int, vtep_mac: bytes, dst_mac: bytes, ethertype: bytes) -> bytes:
    """VXLAN header (flags I, our VNI) + inner Ethernet header from our VTEP."""
    return (b"\x08\0\0\0" + (vni & 0xFFFFFF).to_bytes(3, "big") + b"\0"
            + bytes(dst_mac) + vtep_mac + ethertype)


def arp_body(vtep_mac: bytes, tun_addr: int, op: int, tha: bytes | None, tpa: int) -> bytes:
    """ARP for IPv4 over Ethernet from our VTEP (MAC, overlay address)."""
    return (ARP_HDR + bytes((op,)) + vtep_mac + tun_addr.to_bytes(4, "big")
            + (bytes(tha) if tha else bytes(6)) + tpa.to_bytes(4, "big"))
