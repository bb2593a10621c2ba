"""udpoverlay: a user-space overlay data plane for container networks.

flannel's `udp` backend rebuilt: TUN <-> UDP (raw IP-in-UDP or VXLAN) with a
Cython fast path, static peers or flannel's etcd lease layout.
"""

__version__ = "0.1.0"
