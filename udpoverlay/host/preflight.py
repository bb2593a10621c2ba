"""Pre-flight: what the node's firewall rules will need, checked before
anything is created or written (in cluster mode: before our lease is
written to etcd).

Why here and not only in firewall.py: the rules are installed once the
lease is known (they name our subnet), and a node that then fails them
would hold a 24 h lease it cannot use, taking a free subnet from the next
node. So the same conditions the firewall needs are checked first:
net.ipv4.ip_forward is 1, and the tools are there and answer (iptables
mode: iptables-restore and iptables-save; nftables mode: nft, iptables
only when installed, as the firewall does). Only when the options ask for
rules at all (--ip-masq; cluster mode's --iptables-forward-rules). All of
it blocks (a subprocess): call it from a thread.
"""

from __future__ import annotations

import shutil
import subprocess

from udpoverlay.config.options import Options
from udpoverlay.errors import FirewallError
from udpoverlay.host.firewall import IP_FORWARD, require_forwarding

__all__ = ["check_firewall_prerequisites", "IP_FORWARD"]

PROBE_TIMEOUT = 15.0
_PACKAGE = {"iptables-restore": "iptables", "iptables-save": "iptables", "nft": "nftables"}


def wants_firewall(opts: Options) -> bool:
    """Will the node install rules (as NodeNetwork decides)?"""
    return bool(opts.ip_masq or (opts.cluster and opts.iptables_forward_rules))


def check_firewall_prerequisites(opts: Options, ip_forward: str = IP_FORWARD) -> None:
    """FirewallError (one line, naming the fix) when the rules could not be
    installed on this host; nothing when no rules are wanted."""
    if not wants_firewall(opts):
        return
    require_forwarding(ip_forward)
    if opts.enable_nftables:
        _probe(["nft", "list", "tables", "ip"])
    else:
        _probe(["iptables-save", "-t", "filter"], also=("iptables-restore",))


def _probe(argv: list[str], also: tuple[str, ...] = ()) -> None:
    """The tool and its companions are on PATH and a read-only call works."""
    for tool in (argv[0], *also):
        if shutil.which(tool) is None:
            raise FirewallError(f"{tool} not found on PATH: install the "
                                f"{_PACKAGE.get(tool, tool)} package")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise FirewallError(f"{' '.join(argv)} timed out after {PROBE_TIMEOUT:.0f}s") from None
    except OSError as e:
        raise FirewallError(f"{' '.join(argv)}: {e.strerror or e}") from None
    if proc.returncode != 0:
        detail = " / ".join(line.strip() for line in (proc.stderr or proc.stdout).splitlines()
                            if line.strip()) or "no output"
        raise FirewallError(f"{' '.join(argv)} failed (exit {proc.returncode}): {detail}")
