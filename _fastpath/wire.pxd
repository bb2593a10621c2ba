# The data plane's constants for the compiled twin, as C enums (uvloop's
# habit: no DEF). The values are udpoverlay/dataplane/wire.py's, the one
# home of these numbers; tests/unit/dataplane/test_wire.py checks that the
# extension's exported copy (testing.WIRE, testing.pxi) equals wire.py.

cdef enum:
    MODE_UDP = 0
    MODE_VXLAN = 1

# Verdicts: the order is part of the API (VERDICT_NAMES in wire.py).
cdef enum:
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
    ARP = 14
    BAD_GSO = 15
    BAD_PORT = 16
    KEEPALIVE = 17          # a known peer's datagram shorter than an IPv4 header
    N_VERDICTS = 18

cdef enum:
    BATCH = 64              # packets per syscall batch
    MAX_ROUNDS = 16         # batches per readable callback
    SLOT = 65536            # one buffer slot: any IPv4 packet fits
    STRIDE = 65536 + 64     # a slot plus headroom for the outer headers
    TX_MSGS = 1024          # UDP messages per TX batch (UIO_MAXIOV)
    MAX_WAITS = 5           # waits for a full socket buffer, per batch and socket
    WAIT_MS = 20            # one such wait
    MAX_TX_FDS = 64         # vxlan source sockets
    MAX_QUEUES = 16         # TUN queues / worker pairs (Core.set_queues)

cdef enum:
    VXLAN_HDR = 22          # VXLAN header + inner Ethernet (RFC 7348): TUN read headroom
    ARP_LEN = 28
    ICMP_TTL = 64
    IPV4_MIN = 20           # shorter from a known peer: a NAT keepalive
    PEER_SPEC_LEN = 18      # one packed peer record (wire.PEER_SPEC_FORMAT)
    REPLY_MAX = 96          # an ICMP error (20 + 8 + at most 60 + 8) or a VXLAN ARP (22 + 28)

cdef enum:
    VNET_HDR_LEN = 10
    F_NEEDS_CSUM = 1
    GSO_NONE = 0
    GSO_TCPV4 = 1
    GSO_UDP = 3
    GSO_TCPV6 = 4
    GSO_UDP_L4 = 5
    GSO_ECN = 0x80

cdef enum:
    SOL_UDP = 17
    UDP_SEGMENT = 103
    UDP_GRO = 104
    RX_CMSG = 32            # CMSG_SPACE(sizeof(int)) for UDP_GRO, rounded up
    TX_CMSG = 24            # CMSG_SPACE(sizeof(uint16_t)) for UDP_SEGMENT

cdef enum:
    MAX_GSO_SEGS = 64       # segments per UDP_SEGMENT message (UDP_MAX_SEGMENTS)
    MAX_UDP_PAYLOAD = 65507
    MAX_SPLIT = 512         # segments from one super-packet; more is malformed
    MAX_COALESCE = 64       # segments in one GSO write to the TUN
    MAX_ITEMS = 256         # open coalescing items before a flush
    SCAN_DEPTH = 8          # how far back a segment looks for its flow's item
    TCP_ACK = 0x10
    TCP_PSH = 0x08
    TCP_FIN = 0x01
    TCP_CWR = 0x80

# TX arena: a read (headroom + vnet header + 64 KB) plus its worst split
# (64 KB of payload + MAX_SPLIT headers of 22 + 60 + 60 bytes); BATCH reads fit.
cdef enum:
    TX_PER_READ = 22 + 10 + 65536 + 8 + 65536 + 512 * 144 + 8
    TX_ARENA = 64 * TX_PER_READ
    # one oversized received packet split without a vnet header: every
    # segment at a full stride (headers <= 120 bytes, 64 KB payload + one gso)
    SPLIT_BUF = 2 * 65536 + MAX_SPLIT * 120
