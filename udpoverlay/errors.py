"""Every error udpoverlay raises on purpose, typed; the hot path never
raises (it returns verdicts and counts them). The CLI turns ConfigError
into exit 2 and the set-up errors into exit 1, each as one line."""

from __future__ import annotations

__all__ = ["UdpOverlayError", "ConfigError", "TunSetupError", "ControlError",
           "LeaseStoreError", "StoreDisconnected", "StoreCompacted", "LeaseLostError",
           "LeaseDecodeError", "NetworkConfigChanged"]


class UdpOverlayError(Exception):
    """Base of every error udpoverlay raises on purpose."""


class ConfigError(UdpOverlayError):
    """Bad user input or bad network config: say what and where, one line."""


class TunSetupError(UdpOverlayError):
    """The TUN device, the underlay socket or their addresses/routes could
    not be set up."""


class ControlError(UdpOverlayError):
    """No daemon answered on the control socket (or it answered garbage)."""


class LeaseStoreError(UdpOverlayError):
    """The lease store failed; retryable errors are retried with backoff."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class StoreDisconnected(LeaseStoreError):
    """The store cannot be reached (or the watch stream broke)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class StoreCompacted(LeaseStoreError):
    """The requested watch revision was compacted away: re-list, then watch."""

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message, retryable=True)
        self.compact_revision = compact_revision


class LeaseLostError(LeaseStoreError):
    """Our subnet lease is gone and was not (or must not be) taken back."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class LeaseDecodeError(UdpOverlayError, ValueError):
    """A stored lease value (or key) that flannel's format does not allow."""


class NetworkConfigChanged(UdpOverlayError):
    """`<prefix>/config` changed while running (Network, SubnetLen, SubnetMin/Max,
    backend type, port or VNI): raised by ClusterMembership.run so the daemon
    exits non-zero and its supervisor restarts it under the new config."""


class FirewallError(UdpOverlayError):
    """flanneld's masquerade/forward rules could not be installed, checked or
    removed (a missing iptables/nft, a failing command, ip_forward off)."""


__all__ += ["FirewallError", "ControlSocketError"]


class ControlSocketError(ControlError, OSError):
    """The control socket cannot be set up (bad runtime dir, name taken).
    An OSError too, so the daemon reports it like any socket failure."""
