"""The status document as text: what the daemon builds (Daemon.status) and
serves on its control socket, rendered as `udpoverlay status`
prints: per peer its liveness (active / idle / never, seconds since the
last datagram received and sent), the name it was resolved from and when;
static mode's waiting peers and peers file. Also the few lines the daemon
logs once its set-up is done (setup_summary), from the same document, so
the log and `status` never tell two stories."""

from __future__ import annotations

__all__ = ["format_status", "offload_text", "setup_summary"]


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _ago(value) -> str:
    return "-" if value is None else f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"


def _peer_lines(p: dict) -> list[str]:
    lines = [f"  {p['subnet']:<18} {p['public_ip'] + ':' + str(p['port']):<21} "
             f"{p.get('state', '?'):<7} {_ago(p.get('last_rx')):>6} {_ago(p.get('last_tx')):>6} "
             f"{p['tx_packets']:>9} {_fmt_bytes(p['tx_bytes']):>10} "
             f"{p['rx_packets']:>9} {_fmt_bytes(p['rx_bytes']):>10}"]
    notes = []
    if p.get("host"):
        note = f"name {p['host']}, resolved {_ago(p.get('resolved_ago'))} ago"
        if p.get("resolve_error"):
            note += f" (last lookup failed: {p['resolve_error']})"
        notes.append(note)
    if p.get("keepalive") and "public_key" not in p:
        notes.append(f"keepalive every {p['keepalive']}s, {p.get('tx_keepalive', 0)} sent")
    if notes:
        lines.append(f"  {'':<18} " + "; ".join(notes))
    if "public_key" in p:
        lines += _wg_peer_lines(p)
    return lines


def _wg_peer_lines(p: dict) -> list[str]:
    """A WireGuard peer as `wg show` tells it (no secret is in the document)."""
    pad = f"  {'':<18} "
    hs = p.get("latest_handshake")
    lines = [pad + f"public key {p['public_key']}" + ("  (preshared key)" if p.get("preshared_key")
                                                      else ""),
             pad + f"endpoint {p.get('endpoint') or '(none)'}  latest handshake "
                   + ("never" if hs is None else f"{_ago(hs)} ago")
                   + f"  transfer {_fmt_bytes(p.get('transfer_rx', 0))} received, "
                     f"{_fmt_bytes(p.get('transfer_tx', 0))} sent"]
    ka, age = p.get("persistent_keepalive"), p.get("session_age")
    lines.append(pad + (f"persistent keepalive every {ka}s" if ka else "no persistent keepalive")
                 + ("; no session" if age is None else f"; session age {_ago(age)}")
                 + (f"; {p['queued']} packets wait for a handshake" if p.get("queued") else ""))
    return lines


def _wg_lines(wg: dict, port) -> list[str]:
    lines = [f"  wireguard: public key {wg.get('public_key')}, listening on port {port}, "
             f"{wg.get('peers', 0)} peers, {wg.get('sessions', 0)} with a session "
             f"(AEAD: {wg.get('aead', '?')})"]
    for r in wg.get("refused") or []:
        lines.append(f"  wireguard: left out {r['peer']}: {r['reason']}")
    return lines


def _static_lines(st: dict) -> list[str]:
    lines = [f"  static peers: names re-resolved every {st.get('resolve_interval', 0):g}s, "
             f"{st.get('lookups', 0)} lookups, {st.get('lookup_failures', 0)} failed"]
    if st.get("peers_file"):
        err = st.get("reload_error")
        lines.append(f"  peers file {st['peers_file']}: reloaded {st.get('reloads', 0)} times"
                     + (f"; last reload refused: {err}" if err else ""))
    for w in st.get("waiting") or []:
        lines.append(f"  waiting {w['subnet']:<18} {w['host']}:{w['port']}: {w['reason']}")
    return lines


def format_status(doc: dict) -> str:
    lines = [
        f"udpoverlay {doc.get('version', '?')} on {doc.get('iface')} "
        f"(fast path: {doc.get('implementation')}, backend {doc.get('backend')}, "
        f"dataplane {doc.get('dataplane') or '?'})",
        f"  public {doc.get('public_ip')}:{doc.get('port')}  subnet {doc.get('subnet')}  "
        f"network {doc.get('network')}  mtu {doc.get('mtu')}  uptime {doc.get('uptime', 0):.0f}s",
        "",
        f"  {'SUBNET':<18} {'PEER':<21} {'STATE':<7} {'RX AGO':>6} {'TX AGO':>6} "
        f"{'TX PKTS':>9} {'TX BYTES':>10} {'RX PKTS':>9} {'RX BYTES':>10}",
    ]
    if doc.get("bind_ip") == "0.0.0.0" and doc.get("underlay_ip"):
        lines.insert(2, f"  underlay: bound to 0.0.0.0, source now {doc['underlay_ip']} "
                        f"(follows address changes)")
    if doc.get("underlay_address_gone"):
        lines.insert(2, f"  underlay: address {doc.get('bind_ip')} is GONE from this host: "
                        f"restart needed")
    if doc.get("fast_path_error"):
        lines.insert(2, f"  fast path: the compiled twin did not load "
                        f"({doc['fast_path_error']}): running the pure-Python reference")
    for p in doc.get("peers", []):
        lines += _peer_lines(p)
    if not doc.get("peers"):
        lines.append("  (no peers)")
    if doc.get("static"):
        lines += _static_lines(doc["static"])
    if doc.get("wireguard"):
        lines += _wg_lines(doc["wireguard"], doc.get("port"))
    off = doc.get("offload") or {}
    if off:
        lines.insert(2, "  offload: " + offload_text(off))
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
    for i, q in enumerate(doc.get("queues") or ()):     # --queues > 1
        lines.append(f"  queue {i}: tx {q['tx_packets']} packets, rx {q['rx_packets']} packets")
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


def offload_text(off: dict) -> str:
    """The status document's "offload" as one truthful line: the TUN's
    offloads and the underlay socket's UDP GSO/GRO, each on or off on its
    own (--no-offload, --no-udp-offload, or what the kernel refused)."""
    if off.get("wireguard"):
        return ("plain TUN and socket (--backend wireguard): one packet per TUN read and write, "
                "one datagram per send")
    if off.get("enabled"):
        tun = f"tun {','.join(off.get('tun') or []) or 'none (kernel refused TUNSETOFFLOAD)'}"
    elif off.get("vnet_hdr_refused"):
        tun = ("TUN offloads off (the kernel refused IFF_VNET_HDR): one packet per TUN "
               "read and write")
    else:
        tun = "TUN offloads off (--no-offload): one packet per TUN read and write"
    if off.get("udp_offload", True) is False:
        return f"{tun}; underlay UDP GSO/GRO off (--no-udp-offload): one datagram per send"
    return (f"{tun}; underlay UDP GSO {'on' if off.get('udp_gso') else 'off'}, "
            f"GRO {'on' if off.get('udp_gro') else 'off'}")


def setup_summary(doc: dict) -> list[str]:
    """What set-up made, as the daemon logs it at INFO (one event per line)."""
    nat = "" if doc["bind_ip"] == doc["public_ip"] else f" (advertised as {doc['public_ip']})"
    if doc["bind_ip"] == "0.0.0.0":
        nat = f" (now {doc['underlay_ip']}; the source follows address changes)"
    tun_addr = doc["subnet"].split("/")[0]
    lines = [f"udpoverlay {doc['version']} (fast path: {doc['implementation']}) "
             f"backend={doc['backend']}",
             f"underlay: udp {doc['bind_ip']}:{doc['port']}{nat}; tun {doc['tun']}: address "
             f"{tun_addr}/32 mtu {doc['mtu']}, route {doc['network']}",
             f"local subnet {doc['subnet']}"]
    if doc["backend"] == "vxlan":
        lines.append(f"vxlan: vni {doc['vni']}, our VTEP {doc['vtep_mac']} at {tun_addr}")
    wg = doc.get("wireguard")
    if wg:
        lines.append(f"wireguard: our public key {wg['public_key']}, port {doc['port']}")
        for r in wg.get("refused") or []:
            lines.append(f"wireguard: left out {r['peer']}: {r['reason']}")
    lines.append("offloads: " + offload_text(doc["offload"]))
    peers = doc.get("peers") or []
    if not peers:
        lines.append("peers: from the etcd leases (none yet)" if "cluster" in doc
                     else "no peers configured")
    for p in peers:
        name = f" ({p['host']})" if p.get("host") else ""
        key = f" key {p['public_key']}" if p.get("public_key") else ""
        lines.append(f"peer {p['public_ip']}:{p['port']}{name} -> {p['subnet']}{key}")
    return lines
