"""Typed control-plane errors; the hot path never raises (it returns verdicts)."""

from __future__ import annotations

__all__ = ["UdpOverlayError", "ConfigError", "LeaseStoreError", "TunSetupError"]


class UdpOverlayError(Exception):
    """Base of every error udpoverlay raises on purpose."""


class ConfigError(UdpOverlayError):
    """Bad user input or bad network config: say what and where, one line."""


class LeaseStoreError(UdpOverlayError):
    """The lease store failed; retryable errors are retried with backoff."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class TunSetupError(UdpOverlayError):
    """The TUN device or its addresses/routes could not be set up."""
