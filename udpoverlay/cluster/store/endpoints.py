"""etcd endpoints as flanneld takes them (`http://h:2379`, `https://h:2379`
or `h:2379`) and the TLS credentials for the https ones (flanneld's
--etcd-cafile/--etcd-certfile/--etcd-keyfile), one ConfigError line if bad."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

import grpc

from udpoverlay.errors import ConfigError

__all__ = ["Endpoint", "parse_endpoint", "credentials"]


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """'http://h:2379', 'https://h:2379' or 'h:2379' (http); ConfigError if bad."""
    raw = text.strip()
    url = urllib.parse.urlsplit(raw if "://" in raw else f"http://{raw}")
    try:
        port = url.port or 2379
    except ValueError:
        port = None
    if url.scheme not in ("http", "https") or not url.hostname or port is None \
            or url.path not in ("", "/"):
        raise ConfigError(f"bad etcd endpoint {text!r} (want http(s)://host:port)")
    return Endpoint(url.scheme, url.hostname, port)


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"cannot read etcd {what} {path}: {e.strerror}") from None


def credentials(ca_file: str | None, cert_file: str | None,
                 key_file: str | None) -> grpc.ChannelCredentials:
    if (cert_file is None) != (key_file is None):
        raise ConfigError("etcd TLS needs both a certificate file and a key file")
    return grpc.ssl_channel_credentials(root_certificates=_read(ca_file, "CA file"),
                                        private_key=_read(key_file, "key file"),
                                        certificate_chain=_read(cert_file, "certificate file"))
