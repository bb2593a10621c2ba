"""One flag or config value at a time: parsed, range-checked, and refused
with a one-line ConfigError naming the value (the CLI prints it and exits
2). Shared by the flag table, options.py and the network config; nothing
per packet."""

from __future__ import annotations

import ipaddress
import re

from udpoverlay.config.defaults import BACKENDS, MAX_VNI, MTU_RANGE
from udpoverlay.errors import ConfigError
from udpoverlay.peer import parse_mac

__all__ = ["ip", "net", "port", "integer", "ifaces", "regexes", "choice", "mac", "mtu", "vni",
           "backend"]


def ip(text, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(text).strip())
    except ValueError:
        raise ConfigError(f"{what}: bad IPv4 address {text!r}") from None


def net(text, what: str) -> ipaddress.IPv4Network:
    text = str(text).strip()
    if "/" not in text:
        raise ConfigError(f"{what}: bad CIDR {text!r} (expected ADDRESS/PREFIX)")
    try:
        return ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            raise ConfigError(f"{what}: {text!r} has host bits set "
                              f"(did you mean {ipaddress.IPv4Network(text, strict=False)}?)") from None
        raise ConfigError(f"{what}: bad CIDR {text!r}") from None


def port(value, what: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: bad port {value!r}") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{what}: bad port {value!r} (1-65535)")
    return port


def integer(value, what: str, low: int, high: int) -> int:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: bad number {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"{what} {number} out of range ({low}-{high})")
    return number


def ifaces(values) -> tuple[str, ...]:
    """--iface: names or IPv4 addresses (an address is checked as one)."""
    out = []
    for v in values or ():
        v = str(v).strip()
        if not v or len(v) > 15 or "/" in v or not v.isprintable() or " " in v:
            raise ConfigError(f"--iface: bad interface name or address {v!r}")
        if v[0].isdigit() and v.count(".") == 3:
            ip(v, "--iface")
        out.append(v)
    return tuple(out)


def regexes(values) -> tuple[str, ...]:
    for v in values or ():
        try:
            re.compile(v)
        except re.error as exc:
            raise ConfigError(f"--iface-regex: bad regular expression {v!r}: {exc}") from None
    return tuple(values or ())


def choice(value, what: str, choices: tuple[str, ...]) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise ConfigError(f"{what}: {value!r} is not one of {', '.join(choices)}")
    return text


def mac(value, what: str) -> bytes | None:
    if value is None or value == "":
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    try:
        return parse_mac(value)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def backend(value, allowed: tuple[str, ...] = BACKENDS) -> str:
    """An encapsulation name (flag or Backend.Type); None or "" = udp."""
    name = (value or "udp").lower()
    if name not in allowed:
        raise ConfigError(f"unknown backend {name!r} (choose from: {', '.join(allowed)})")
    return name


def mtu(value, what: str = "--mtu") -> int | None:
    """A TUN MTU (flag or Backend.MTU); None = from the underlay."""
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: bad value {value!r}") from None
    if not MTU_RANGE[0] <= number <= MTU_RANGE[1]:
        raise ConfigError(f"{what} {number} out of range ({MTU_RANGE[0]}-{MTU_RANGE[1]})")
    return number


def vni(value, what: str = "--vni") -> int:
    """A VXLAN network identifier, 0..2^24-1 (flag and network config alike)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: bad value {value!r}") from None
    if not 0 <= number <= MAX_VNI:
        raise ConfigError(f"{what} {value} out of range (0-{MAX_VNI})")
    return number
