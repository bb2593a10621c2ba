"""The data plane's constants: ONE home, neither twin's.

Verdicts (and their names, whose order is part of the status API), modes,
batch sizes, header sizes, the virtio_net_hdr layout and the UDP offload
socket options. The reference twin (dataplane/_py) imports them from here;
the compiled twin declares the same values as `cdef enum`s in
_fastpath/wire.pxd, and tests/unit/dataplane/test_wire.py checks that the
two agree. Host code (TUN, sockets) imports the socket options and
VNET_HDR_LEN from here too.
"""

from __future__ import annotations

# -- modes (backends) ----------------------------------------------------------
MODE_UDP = 0           # flannel's udp backend: the inner IPv4 packet is the payload
MODE_VXLAN = 1         # RFC 7348: VXLAN header + inner Ethernet header + packet
MODES = {"udp": MODE_UDP, "vxlan": MODE_VXLAN}

# -- verdicts: index into VERDICT_NAMES; the order is part of the API -----------
OK = 0
TOO_SHORT = 1
NOT_IPV4 = 2
BAD_HEADER = 3
NO_ROUTE = 4
TTL_EXPIRED = 5
UNKNOWN_PEER = 6
SPOOFED_SRC = 7
NOT_LOCAL = 8
TX_ERROR = 9
BAD_VXLAN = 10
BAD_VNI = 11
WRONG_MAC = 12
UNRESOLVED = 13
ARP = 14            # an ARP frame consumed by the engine (not a drop)
BAD_GSO = 15        # a TUN super-packet whose vnet header does not fit it
BAD_PORT = 16       # udp mode: from a peer's address but not from its configured port
KEEPALIVE = 17      # a known peer's datagram shorter than an IPv4 header (NAT keepalive; not a drop)
VERDICT_NAMES = ("ok", "too_short", "not_ipv4", "bad_header", "no_route",
                 "ttl_expired", "unknown_peer", "spoofed_src", "not_local",
                 "tx_error", "bad_vxlan", "bad_vni", "wrong_mac", "unresolved",
                 "arp", "bad_gso", "bad_port", "keepalive")
N_VERDICTS = len(VERDICT_NAMES)

# Plain counters, in the order the twins' Core.counts() returns them.
# rx_csum_partial: inner TCP/UDP checksums a kernel vxlan sender left as the
# pseudo-header partial sum (checksum offload), finished by us;
# arp_mac_changed: a learned VTEP MAC replaced by a different one;
# rx_resegmented: received inner TCP packets longer than the TUN MTU (a kernel
# sender's super-frame), written as a GSO packet or split into MTU-sized ones;
# tx_gso_messages: UDP_SEGMENT messages the kernel took (each carried 2 to
# MAX_GSO_SEGS wire datagrams in one send): fewer than tx_packets = batching.
SCALAR_COUNTERS = ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes", "icmp_sent",
                   "tx_super_packets", "rx_coalesced", "rx_csum_bad", "rx_csum_partial",
                   "arp_mac_changed", "rx_resegmented", "tx_gso_messages")

# -- the peer table as the facade hands it to a core (Core.set_peers_packed) ------
# One record per peer, native byte order, no padding: ip, net, port, prefix
# length, MAC configured (1) or unknown/learned (0), MAC. The compiled twin
# reads the same layout (PEER_SPEC_LEN in wire.pxd).
PEER_SPEC_FORMAT = "=IIHBB6s"
PEER_SPEC_LEN = 18

# -- TUN I/O (Core.set_io, Runner's io=, the daemon's --io) ---------------------
IO_MODES = ("auto", "io_uring", "epoll")

# -- batching --------------------------------------------------------------------
BATCH = 64          # packets per syscall batch
MAX_ROUNDS = 16     # batches per readable callback, so one side cannot starve the other
SLOT = 65536        # one buffer slot: any IPv4 packet fits
TX_MSGS = 1024      # UDP messages per TX batch (sendmmsg's limit, UIO_MAXIOV)
MAX_WAITS = 5       # waits for a full socket buffer, per batch and socket
WAIT_MS = 20        # one such wait
MAX_TX_FDS = 64     # vxlan source sockets
MAX_QUEUES = 16     # TUN queues, each with its worker pair (--queues)

# -- headers -----------------------------------------------------------------------
VXLAN_HDR = 8 + 14  # VXLAN header + inner Ethernet header (RFC 7348)
ARP_LEN = 28        # ARP for IPv4 over Ethernet
ICMP_TTL = 64
IPV4_MIN = 20       # shorter from a known peer: a NAT keepalive
ICMP_ERRORS = (3, 4, 5, 11, 12)   # never answer these with another error (RFC 1812)

# -- virtio_net_hdr (IFF_VNET_HDR): 10 bytes, host byte order ------------------------
VNET_HDR_LEN = 10
F_NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

# -- UDP offloads (linux/udp.h): UDP_SEGMENT = GSO send, UDP_GRO = GRO receive --------
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104

# -- GSO/GRO limits --------------------------------------------------------------------
MAX_GSO_SEGS = 64         # segments per UDP_SEGMENT message (kernel: UDP_MAX_SEGMENTS)
MAX_UDP_PAYLOAD = 65507   # one UDP datagram, GSO or not
MAX_SPLIT = 512           # segments from one super-packet; more is malformed
MAX_COALESCE = 64         # segments in one GSO write to the TUN
MAX_ITEMS = 256           # open coalescing items before a flush
SCAN_DEPTH = 8            # how far back a segment looks for its flow's item
TCP_ACK, TCP_PSH, TCP_FIN, TCP_CWR = 0x10, 0x08, 0x01, 0x80
