"""The WireGuard transport AEAD's throughput, beside OpenSSL's own figure.

    python -m benchmarks.aead [--size 1400] [--batch 64] [--seconds 3]
                              [--openssl-bytes 1424] [--no-c-floor]

Run from the repository root (no root needed). In one run, on one core at
a time:

1. `openssl speed -evp chacha20-poly1305 -bytes 1424 -seconds 3`: libcrypto
   streaming through one context (EVP_EncryptUpdate only: no per-message
   nonce, no tag), bytes over user CPU time (openssl speed's default);
2. the compiled twin's WgKey.seal_slots and open_slots, in place over
   `--batch` slots of `--size`-byte packets (padded to 16: 1400 -> 1408
   bytes through the cipher), bytes over this thread's CPU time (the same
   basis as 1; wall-clock figures are printed too); seal_slots once more
   in a child process with the command's libcrypto default
   (udpoverlay/entry.py: OPENSSL_ia32cap), as the daemon runs it, when
   that differs from this process. Its ratio to 1 is the acceptance
   figure of issue 23 (>= 0.8x); openssl speed runs with libcrypto's own
   choice (no OPENSSL_ia32cap);
3. the same libcrypto calls in a plain C loop (the product's own
   _fastpath/wgevp.h, compiled here with `cc` and -lcrypto), both ways it
   can reach libcrypto: through EVP, and calling the provider's functions
   directly (the default): what libcrypto's per-message work alone costs,
   the ceiling for any caller; on a CPU with AVX-512 IFMA once more with
   that masked for libcrypto (OPENSSL_ia32cap), which shows what its IFMA
   Poly1305's per-key setup (a power table, paid per message here, once
   per stream in openssl speed) costs (--no-c-floor skips all three);
4. the compiled seal_batch/open_batch (lists of bytes) and the pure-Python
   reference twin (pyca cryptography, one call per packet), for comparison.

"bytes" are the bytes through the cipher (the padded plaintext), as
openssl speed counts them; packets per second are printed too. The machine's
load (os.getloadavg) and core count are printed first: on a shared machine
compare only figures of the same run.
"""

from __future__ import annotations

import argparse
import array
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from udpoverlay import entry
from udpoverlay.dataplane import twins, wgaead
from udpoverlay.dataplane.wgwire import WG_HEADER, WG_OVERHEAD, padded_length

SPEED_LINE = re.compile(r"^ChaCha20-Poly1305\s+([0-9.]+)k\s*$", re.M | re.I)

C_FLOOR = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "wgevp.h"
/* seal_slots' libcrypto calls (the product's own wgevp.h), nothing else:
 * init with the nonce, update in place, final, the tag.
 * argv: size batch seconds evp|provider. */
static double cpu(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
                          return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
    if (argc != 5) return 2;
    int n = atoi(argv[1]), batch = atoi(argv[2]); double secs = atof(argv[3]);
    int stride = 32 + ((n + 15) & ~15) + 16;
    unsigned char key[32] = {1}, iv[12] = {0};
    unsigned char *buf = calloc((size_t)batch, (size_t)stride);
    uo_wg_aead a;
    uo_wg_aead_force_evp(strcmp(argv[4], "evp") == 0);
    if (strcmp(uo_wg_aead_impl(), argv[4]) != 0 || uo_wg_aead_init(&a, key, 1) != 0)
        return 3;
    unsigned long long packets = 0, counter = 0;
    double t0 = cpu(), t = t0;
    while (t - t0 < secs) {
        for (int i = 0; i < batch; i++, counter++) {
            unsigned char *d = buf + (size_t)i * stride + 16;
            memcpy(iv + 4, &counter, 8);
            if (uo_wg_aead_seal(&a, iv, NULL, 0, d, d, n, d + n) != 0)
                return 1;
        }
        packets += (unsigned long long)batch;
        t = cpu();
    }
    printf("%llu %.6f\n", packets, t - t0);
    return 0;
}
"""
FASTPATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_fastpath")
# OPENSSL_ia32cap with AVX-512 IFMA masked (CPUID 7 EBX bit 21): libcrypto
# then keys Poly1305 without its IFMA power table (why: main's last row)
NO_IFMA = ":~0x200000"


def openssl_speed(nbytes: int, seconds: int) -> float | None:
    """openssl speed's ChaCha20-Poly1305 bytes/s at nbytes, or None."""
    exe = shutil.which("openssl")
    if exe is None:
        return None
    env = {k: v for k, v in os.environ.items() if k != "OPENSSL_ia32cap"}   # its own choice
    out = subprocess.run([exe, "speed", "-evp", "chacha20-poly1305", "-bytes", str(nbytes),
                          "-seconds", str(seconds)], capture_output=True, text=True, check=False,
                         env=env)
    return parse_speed(out.stdout)


def parse_speed(text: str) -> float | None:
    """The bytes/s in openssl speed's result line ("ChaCha20-Poly1305  2271719.76k")."""
    m = SPEED_LINE.search(text)
    return float(m.group(1)) * 1000 if m else None


def has_ifma() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return " avx512ifma" in f.read()
    except OSError:
        return False


def c_floor(padded: int, batch: int, seconds: float, modes: list[tuple[str, dict]]
            ) -> list[tuple[float, float] | None]:
    """Per (mode, extra environment): (bytes/s, packets/s) over thread CPU
    time of the plain C loop, or None when it could not run."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return [None] * len(modes)
    results: list[tuple[float, float] | None] = []
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "floor.c"), os.path.join(tmp, "floor")
        with open(src, "w") as f:
            f.write(C_FLOOR)
        built = subprocess.run([cc, "-O2", f"-I{FASTPATH}", src, "-o", exe, "-lcrypto"],
                               capture_output=True, text=True, check=False)
        if built.returncode:
            print(f"C floor: not built ({built.stderr.strip().splitlines()[-1:]})")
            return [None] * len(modes)
        for mode, env in modes:
            out = subprocess.run([exe, str(padded), str(batch), str(seconds), mode],
                                 capture_output=True, text=True, check=False,
                                 env={**os.environ, **env})
            if out.returncode:
                results.append(None)
                continue
            packets, cpu = out.stdout.split()
            pps = int(packets) / float(cpu)
            results.append((pps * padded, pps))
    return results


def as_the_daemon(args: argparse.Namespace) -> tuple[float, float] | None:
    """seal_slots' (CPU, wall) packets/s in a child process with the
    command's libcrypto default (udpoverlay/entry.py) in its environment,
    i.e. as the daemon runs it; None when that is this process already, or
    the default sets nothing on this machine."""
    env = dict(os.environ)
    entry.libcrypto_defaults(env)
    if env.get("OPENSSL_ia32cap") == os.environ.get("OPENSSL_ia32cap"):
        return None
    out = subprocess.run([sys.executable, "-m", "benchmarks.aead", "--seal-slots-only",
                          "--size", str(args.size), "--batch", str(args.batch),
                          "--seconds", str(args.seconds), "--mtu", str(args.mtu)],
                         capture_output=True, text=True, check=False, env=env)
    if out.returncode:
        return None
    cpu_pps, wall_pps = out.stdout.split()
    return float(cpu_pps), float(wall_pps)


def timed(fn: Callable[[int], object], batch: int, seconds: float) -> tuple[float, float]:
    """(packets/s over thread CPU time, packets/s over wall time) of
    fn(round) called until seconds of wall time passed."""
    fn(0)                                           # warm up
    rounds = 0
    w0, c0 = time.perf_counter(), time.thread_time()
    while time.perf_counter() - w0 < seconds:
        fn(rounds)
        rounds += 1
    wall, cpu = time.perf_counter() - w0, time.thread_time() - c0
    return rounds * batch / cpu, rounds * batch / wall


def slots_case(cls: type, size: int, batch: int, mtu: int
               ) -> tuple[Callable[[int], object], Callable[[int], object]]:
    """seal and open callables over one buffer of batch slots, in place."""
    key = cls(os.urandom(32))
    stride = WG_OVERHEAD + padded_length(size, mtu)
    buf = bytearray(os.urandom(batch * stride))
    lens = array.array("I", [size] * batch)
    packet_lens = array.array("I", [size] * batch)
    verdicts = bytearray(batch)
    sealed_buf = bytearray(buf)
    sealed_lens = array.array("I", [size] * batch)
    key.seal_slots(sealed_buf, sealed_lens, batch, stride, 1, 0, mtu)
    sealed = bytes(sealed_buf)
    sealed_lens_ref = array.array("I", sealed_lens)

    def seal(r: int) -> object:
        lens[:] = packet_lens
        return key.seal_slots(buf, lens, batch, stride, 1, r * batch, mtu)

    def open_(r: int) -> object:
        buf[:] = sealed                             # a memcpy: opened in place, so restore
        lens[:] = sealed_lens_ref
        ok = key.open_slots(buf, lens, verdicts, batch, stride)
        assert ok == batch
        return ok

    return seal, open_


def lists_case(cls: type, size: int, batch: int, mtu: int
               ) -> tuple[Callable[[int], object], Callable[[int], object]]:
    key = cls(os.urandom(32))
    packets = [os.urandom(size) for _ in range(batch)]
    sealed = key.seal_batch(1, 0, packets, mtu)
    return (lambda r: key.seal_batch(1, r * batch, packets, mtu),
            lambda r: key.open_batch(sealed))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1400, help="packet bytes (default 1400)")
    ap.add_argument("--batch", type=int, default=64, help="packets per call (default 64)")
    ap.add_argument("--seconds", type=int, default=3, help="per measurement (default 3)")
    ap.add_argument("--mtu", type=int, default=0, help="padding cap, as seal's mtu (default 0)")
    ap.add_argument("--openssl-bytes", type=int, default=1424,
                    help="openssl speed -bytes (default 1424)")
    ap.add_argument("--no-c-floor", action="store_true", help="skip the plain C loop")
    ap.add_argument("--seal-slots-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    padded = padded_length(args.size, args.mtu)
    if args.seal_slots_only:        # as_the_daemon()'s child: "cpu_pps wall_pps"
        seal, _ = slots_case(wgaead.wgkey_class("cython"), args.size, args.batch, args.mtu)
        print("%f %f" % timed(seal, args.batch, args.seconds))
        return 0

    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; fast path: {twins.IMPLEMENTATION}")
    print(f"packets of {args.size} B (through the cipher: {padded} B, on the wire "
          f"{padded + WG_OVERHEAD} B incl. the {WG_HEADER} B header and tag), "
          f"batches of {args.batch}, {args.seconds} s each; CPU = this thread's CPU time\n")

    speed = openssl_speed(args.openssl_bytes, args.seconds)

    def row(name: str, cpu_pps: float, wall_pps: float | None) -> None:
        mbs = cpu_pps * padded / 1e6
        wall = f"{wall_pps * padded / 1e6:8.0f}" if wall_pps else "       -"
        ratio = f"{cpu_pps * padded / speed:5.2f}x" if speed else "    -"
        print(f"{name:44s} {mbs:8.0f} {wall} {cpu_pps / 1e3:9.0f} {1e9 / cpu_pps:8.0f}  {ratio}")

    print(f"{'':44s} {'MB/s CPU':>8s} {'MB/s wall':>8s} {'kpkt/s':>9s} {'ns/pkt':>8s}  vs openssl")
    if speed:
        print(f"{f'openssl speed -evp ... -bytes {args.openssl_bytes} (user CPU)':44s} "
              f"{speed / 1e6:8.0f}        - {speed / args.openssl_bytes / 1e3:9.0f} "
              f"{1e9 * args.openssl_bytes / speed:8.0f}  1.00x")
    else:
        print("openssl speed: not available")
    if not args.no_c_floor:
        modes = [("evp", {}), ("provider", {})]
        if has_ifma():
            modes.append(("provider", {"OPENSSL_ia32cap": NO_IFMA}))
        floors = c_floor(padded, args.batch, args.seconds, modes)
        names = ["EVP calls, plain C loop", "provider calls, plain C loop (ceiling)",
                 f"  the same, OPENSSL_ia32cap={NO_IFMA}"]
        for name, floor in zip(names, floors):
            if floor:
                row(name, floor[1], None)
    try:
        compiled = wgaead.wgkey_class("cython")
    except (ImportError, AttributeError) as exc:
        print(f"compiled twin: not available ({exc})")
        compiled = None
    accepted = None
    if compiled is not None:
        seal, open_ = slots_case(compiled, args.size, args.batch, args.mtu)
        accepted = timed(seal, args.batch, args.seconds)
        row("compiled seal_slots (in place)", *accepted)
        daemon = as_the_daemon(args)
        if daemon is not None:
            row(f"  the same as the daemon runs it ({entry.IA32CAP_DEFAULT})", *daemon)
            accepted = daemon
        row("compiled open_slots (in place, + restore)", *timed(open_, args.batch, args.seconds))
        seal, open_ = lists_case(compiled, args.size, args.batch, args.mtu)
        row("compiled seal_batch (lists of bytes)", *timed(seal, args.batch, args.seconds))
        row("compiled open_batch (lists of bytes)", *timed(open_, args.batch, args.seconds))
    reference = wgaead.wgkey_class("python")
    seal, open_ = lists_case(reference, args.size, args.batch, args.mtu)
    row("reference seal_batch (cryptography)", *timed(seal, args.batch, max(1, args.seconds // 3)))
    row("reference open_batch (cryptography)", *timed(open_, args.batch, max(1, args.seconds // 3)))
    if speed and accepted is not None:
        print(f"\nacceptance (issue 23): compiled seal_slots as the daemon runs it / openssl "
              f"speed = {accepted[0] * padded / speed:.2f}x (target >= 0.8x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
