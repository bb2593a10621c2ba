"""Every default and range of the configuration in one place (flannel's value
wherever flannel has one). Imported by the flag table, the Options builders
and the cluster's network-config parser; nothing here imports them."""

from __future__ import annotations

from udpoverlay.dataplane.wire import IO_MODES, MAX_QUEUES

__all__ = ["DEFAULT_TUN", "DEFAULT_PORTS", "BACKENDS", "DEFAULT_VNI", "MAX_VNI", "DEFAULT_PREFIX",
           "DEFAULT_SUBNET_FILE", "DEFAULT_LEASE_TTL", "MIN_LEASE_TTL", "DEFAULT_RENEW_MARGIN_MIN",
           "RENEW_MARGIN_RANGE", "DEFAULT_IPTABLES_RESYNC", "DEFAULT_HEALTHZ_IP", "LOG_FORMATS",
           "IO_MODES", "DEFAULT_IO_MODE", "DEFAULT_RESOLVE_INTERVAL", "MAX_KEEPALIVE",
           "MAX_BUSY_POLL_US", "MTU_RANGE", "MAX_QUEUES", "STATIC_BACKENDS"]

DEFAULT_TUN = "udpov0"                          # the TUN device
# flannel's udp port; the kernel's vxlan port; WireGuard's (flannel's ListenPort)
DEFAULT_PORTS = {"udp": 8285, "vxlan": 8472, "wireguard": 51820}
BACKENDS = ("udp", "vxlan")                     # the fast path's (both modes)
STATIC_BACKENDS = (*BACKENDS, "wireguard")      # --backend; cluster: network.CLUSTER_BACKENDS
DEFAULT_VNI = 1
MAX_VNI = (1 << 24) - 1
DEFAULT_PREFIX = "/coreos.com/network"
DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_LEASE_TTL = 86400                       # seconds, as flannel's etcd leases
MIN_LEASE_TTL = 5
DEFAULT_RENEW_MARGIN_MIN = 60                   # minutes, flanneld's --subnet-lease-renew-margin
RENEW_MARGIN_RANGE = (1, 1439)                  # minutes, as flanneld checks it
DEFAULT_IPTABLES_RESYNC = 5                     # seconds
DEFAULT_HEALTHZ_IP = "0.0.0.0"
LOG_FORMATS = ("text", "json")
DEFAULT_IO_MODE = "auto"
DEFAULT_RESOLVE_INTERVAL = 60.0
MAX_KEEPALIVE = 3600
MAX_BUSY_POLL_US = 10000
MTU_RANGE = (576, 65535)
