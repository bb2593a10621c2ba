"""The status document (what the daemon serves on its control socket) as
the text `udpoverlay status` prints."""

from __future__ import annotations

__all__ = ["format_status"]


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_status(doc: dict) -> str:
    lines = [
        f"udpoverlay {doc.get('version', '?')} on {doc.get('iface')} "
        f"(fast path: {doc.get('implementation')}, backend {doc.get('backend')}, "
        f"dataplane {doc.get('dataplane') or '?'})",
        f"  public {doc.get('public_ip')}:{doc.get('port')}  subnet {doc.get('subnet')}  "
        f"network {doc.get('network')}  mtu {doc.get('mtu')}  uptime {doc.get('uptime', 0):.0f}s",
        "",
        f"  {'SUBNET':<20} {'PEER':<22} {'TX PKTS':>10} {'TX BYTES':>11} "
        f"{'RX PKTS':>10} {'RX BYTES':>11}",
    ]
    for p in doc.get("peers", []):
        lines.append(f"  {p['subnet']:<20} {p['public_ip'] + ':' + str(p['port']):<22} "
                     f"{p['tx_packets']:>10} {_fmt_bytes(p['tx_bytes']):>11} "
                     f"{p['rx_packets']:>10} {_fmt_bytes(p['rx_bytes']):>11}")
    if not doc.get("peers"):
        lines.append("  (no peers)")
    off = doc.get("offload") or {}
    if off.get("enabled"):
        lines.insert(2, f"  offload: tun {','.join(off.get('tun') or []) or 'none'}; "
                        f"udp gso {'on' if off.get('udp_gso') else 'off'}, "
                        f"gro {'on' if off.get('udp_gro') else 'off'}")
    elif off:
        lines.insert(2, "  offload: off" + (" (the kernel refused IFF_VNET_HDR)"
                                            if off.get("vnet_hdr_refused") else ""))
    counters = doc.get("counters", {})
    lines.append("")
    lines.append("  counters:")
    plain = {k: v for k, v in counters.items() if "drop" not in k}
    drops = {k: v for k, v in counters.items() if "drop" in k and v}
    for k in sorted(plain):
        lines.append(f"    {k:<28} {plain[k]}")
    lines.append("  drops:" + ("" if drops else " none"))
    for k in sorted(drops):
        lines.append(f"    {k:<28} {drops[k]}")
    ctl = doc.get("control")
    if ctl:
        lines.append(f"  control socket: served {ctl.get('served')}, rejected busy "
                     f"{ctl.get('rejected_busy')}, timed out {ctl.get('timed_out')}, "
                     f"documents built {ctl.get('builds')}")
    cl = doc.get("cluster")
    if cl:
        lease = cl.get("lease") or {}
        lines += ["", f"  cluster: store {cl.get('store')}, lease {lease.get('subnet')} "
                      f"expires in {lease.get('expires_in')}s (etcd lease {lease.get('etcd_lease')})"]
        for p in cl.get("peers", []):
            expires = "" if p.get("expires_in") is None else f"  expires in {p['expires_in']}s"
            lines.append(f"    {p['subnet']:<20} {p['public_ip']:<16} lease age {p['age']}s"
                         f"{expires}")
        for s in cl.get("skipped", []):
            lines.append(f"    skipped {s['subnet']}: {s['reason']}")
        rejected = cl.get("rejected") or {}
        if rejected:
            lines.append("    rejected lease keys: " + ", ".join(
                f"{reason} {n}" for reason, n in sorted(rejected.items())))
    return "\n".join(lines)
