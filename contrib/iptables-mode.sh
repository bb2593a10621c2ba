#!/bin/sh
# Choose the iptables backend the host uses, once, inside udpoverlay's image.
#
# Debian's iptables package carries both backends (iptables-legacy and
# iptables-nft, one chosen by update-alternatives, nft by default). Rules
# written through the other backend than the host's kube-proxy and Docker use
# still work in the kernel but are invisible to their iptables-save, and the
# order between the two sets is not what anyone expects. So the image decides
# at first use which one the host is on:
#
#   1. a table that kubelet or kube-proxy marked (chain KUBE-IPTABLES-HINT or
#      KUBE-KUBELET-CANARY, created by them in the mode they use) decides;
#   2. otherwise the backend with more rules (IPv4 + IPv6) wins;
#   3. a tie, both empty included, means nft (Debian's default, and the only
#      backend of hosts without the legacy x_tables modules).
#
# Usage:
#   iptables-mode.sh detect     print "legacy" or "nft"; change nothing
#   iptables-mode.sh set        detect, then point the iptables and ip6tables
#                               alternatives at that backend; print the mode
#   iptables, iptables-save, iptables-restore, ip6tables{,-save,-restore}
#                               (links to this script, ahead of the real ones
#                               on PATH): the first call runs `set`, removes
#                               those links, and runs the real command
#
# Environment (for tests): IPTABLES_MODE_SBIN (default /usr/sbin) is where
# the real commands are.
set -eu

sbin=${IPTABLES_MODE_SBIN:-/usr/sbin}
wrapped="iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore"

# The save output of one backend, IPv4 and IPv6; nothing if it is missing or
# cannot read the kernel's tables.
dump() {
    for family in iptables ip6tables; do
        "$family-$1-save" 2>/dev/null || true
    done
}

detect() {
    legacy=$(dump legacy)
    nft=$(dump nft)
    for hint in KUBE-IPTABLES-HINT KUBE-KUBELET-CANARY; do
        if printf '%s\n' "$legacy" | grep -q "^:$hint "; then
            echo legacy
            return 0
        fi
        if printf '%s\n' "$nft" | grep -q "^:$hint "; then
            echo nft
            return 0
        fi
    done
    n_legacy=$(printf '%s\n' "$legacy" | grep -c '^-' || true)
    n_nft=$(printf '%s\n' "$nft" | grep -c '^-' || true)
    if [ "$n_legacy" -gt "$n_nft" ]; then
        echo legacy
    else
        echo nft
    fi
}

set_mode() {
    mode=$(detect)
    update-alternatives --set iptables "$sbin/iptables-$mode" >/dev/null
    update-alternatives --set ip6tables "$sbin/ip6tables-$mode" >/dev/null
    echo "$mode"
}

name=$(basename "$0")
case "$name" in
    iptables | iptables-save | iptables-restore | ip6tables | ip6tables-save | ip6tables-restore)
        mode=$(set_mode)
        echo "iptables-mode: using iptables-$mode, as this host does" >&2
        # Decided once: the links go, later calls reach the real commands. A
        # read-only file system keeps them; each call then decides again.
        here=$(dirname "$0")
        for link in $wrapped; do
            case $(readlink "$here/$link" 2>/dev/null) in
                *iptables-mode*) rm -f "$here/$link" 2>/dev/null || true ;;
            esac
        done
        exec "$sbin/$name" "$@"
        ;;
esac

case "${1:-}" in
    detect) detect ;;
    set) set_mode ;;
    *)
        sed -n '17,25p' "$0" >&2
        exit 2
        ;;
esac
