"""subnet.env: what the flannel CNI plugin reads, and our memory across restarts.

Why atomic: the CNI plugin may read the file at any moment (a pod being
created); it must see the old file or the new one, never half of one. So we
write a temp file in the same directory, fsync it, rename it over the old
one and fsync the directory (what flannel does via renameio). The format
is flannel's, line for line:

    FLANNEL_NETWORK=10.244.0.0/16
    FLANNEL_SUBNET=10.244.1.1/24      (first usable address, subnet prefix)
    FLANNEL_MTU=1472
    FLANNEL_IPMASQ=true

Reading never raises: a missing or garbled file just means "no previous
subnet", as in flannel's ReadCIDRFromSubnetFile.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import tempfile

__all__ = ["write_subnet_env", "read_subnet_env", "previous_subnet"]

log = logging.getLogger(__name__)

_MAX_SIZE = 64 * 1024


def write_subnet_env(path: str | os.PathLike, network: ipaddress.IPv4Network,
                     subnet: ipaddress.IPv4Network, mtu: int, ipmasq: bool = True) -> None:
    """Atomically (re)write the file; creates the directory; OSError on failure."""
    network = ipaddress.IPv4Network(network)
    subnet = ipaddress.IPv4Network(subnet)
    first = subnet.network_address + 1
    text = (f"FLANNEL_NETWORK={network}\n"
            f"FLANNEL_SUBNET={first}/{subnet.prefixlen}\n"
            f"FLANNEL_MTU={int(mtu)}\n"
            f"FLANNEL_IPMASQ={'true' if ipmasq else 'false'}\n")
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o755, exist_ok=True)
    try:
        mode = os.stat(path).st_mode & 0o777  # keep an operator's permissions
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _parse(text: str) -> dict[str, str] | None:
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key.replace("_", "").isalnum():
            return None
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def read_subnet_env(path: str | os.PathLike) -> dict[str, str] | None:
    """KEY -> value from the file; None if it is missing or garbled."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_SIZE + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("cannot read %s: %s", path, e)
        return None
    try:
        values = _parse(data.decode("utf-8")) if len(data) <= _MAX_SIZE else None
    except UnicodeDecodeError:
        values = None
    if values is None:
        log.warning("ignoring garbled %s", path)
    return values


def previous_subnet(path: str | os.PathLike) -> ipaddress.IPv4Network | None:
    """The subnet FLANNEL_SUBNET names (10.244.1.1/24 -> 10.244.1.0/24), or None."""
    values = read_subnet_env(path)
    text = (values or {}).get("FLANNEL_SUBNET", "")
    if "/" not in text:
        return None
    try:
        return ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        log.warning("ignoring bad FLANNEL_SUBNET=%r in %s", text, path)
        return None
