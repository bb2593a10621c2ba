"""Differential tests of the WireGuard transport AEAD (WgKey): the compiled
twin (_fastpath/wgcrypto.pxi, libcrypto) and the reference
(dataplane/_py/wgcrypto.py, pyca cryptography) give byte-identical
datagrams, plaintexts, verdicts, buffers and errors, and both agree with
the protocol engine's own per-packet functions (wireguard.transport.seal /
open_). Plus RFC 8439's AEAD vector through the compiled path.

Every test runs twice: with the compiled twin's keys on each of its two
ways to libcrypto (_fastpath/wgevp.h): the provider's functions called
directly (the default on OpenSSL 3) and EVP (the fallback)."""

from __future__ import annotations

import array
import pickle
import random
import ssl
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.twins import both
from udpoverlay.dataplane import twins, wgaead, wgwire
from udpoverlay.dataplane.wgwire import (
    WG_BAD_TAG,
    WG_HEADER,
    WG_MALFORMED,
    WG_MAX_COUNTER,
    WG_MAX_PACKET,
    WG_MAX_RECEIVER,
    WG_OK,
    WG_OVERHEAD,
    padded_length,
)
from udpoverlay.wireguard import messages, transport

MAX = WG_MAX_COUNTER


@pytest.fixture(scope="module", autouse=True, params=["provider", "evp"])
def libcrypto_path(request):
    """The compiled keys made in this module's tests take request.param."""
    _py, cy = both()
    if request.param == "provider" and ssl.OPENSSL_VERSION_INFO < (3,):
        pytest.skip("OpenSSL 1.1 has no providers: the EVP path only")
    cy.testing.wg_aead_force_evp(request.param == "evp")
    try:
        assert cy.testing.wg_aead_impl() == request.param
        yield request.param
    finally:
        cy.testing.wg_aead_force_evp(False)


def keys(key: bytes):
    """(reference WgKey, compiled WgKey) on key."""
    py, cy = both()
    return py.WgKey(key), cy.WgKey(key)


def data(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def engine_datagram(key, receiver, counter, packet, mtu=0) -> bytes:
    return transport.seal(key, receiver, counter, transport.padded(packet, mtu))


# Sizes: mostly around an MTU, some tiny, some up to the largest (64 KB
# GSO-sized packets); kept few per example so an example stays fast.
sizes = st.one_of(st.integers(0, 64), st.integers(1300, 1500), st.integers(0, WG_MAX_PACKET),
                  st.sampled_from([WG_MAX_PACKET, WG_MAX_PACKET - 15, 65488, 1420, 1424]))
counters = st.one_of(st.integers(0, MAX), st.integers(MAX - 70, MAX), st.integers(0, 300))
receivers = st.one_of(st.integers(0, WG_MAX_RECEIVER), st.sampled_from([0, WG_MAX_RECEIVER]))
mtus = st.one_of(st.just(0), st.integers(0, 65535), st.sampled_from([1420, 1400, 1280]))
batches = st.lists(st.tuples(sizes, st.integers(0, 2**32)), max_size=6)
SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_constants_match_wgwire():
    py, cy = both()
    ints = {k: v for k, v in vars(wgwire).items() if k.isupper() and isinstance(v, int)}
    assert py.testing.WG == ints
    assert cy.testing.WG == ints
    assert len(wgwire.WG_VERDICT_NAMES) == wgwire.WG_N_VERDICTS
    for i, name in enumerate(wgwire.WG_VERDICT_NAMES):
        assert getattr(wgwire, "WG_" + name.upper()) == i
    assert WG_HEADER == messages.TRANSPORT_HEADER_SIZE
    assert WG_OVERHEAD == messages.TRANSPORT_MIN_SIZE


def test_the_switch_picks_the_compiled_twin_when_it_loaded():
    assert wgaead.WgKey is twins.DEFAULT.WgKey
    assert wgaead.wgkey_class(twins.IMPLEMENTATION) is wgaead.WgKey
    if twins.FALLBACK is None and twins.IMPLEMENTATION == "cython":
        assert wgaead.WgKey.__module__ == "udpoverlay.dataplane._c"


@pytest.mark.parametrize("size,mtu", [(0, 0), (1, 0), (15, 0), (16, 0), (17, 1420), (1400, 1420),
                                      (1419, 1420), (1420, 1420), (1421, 1420), (30, 20)])
def test_padding_rule_is_the_engines(size, mtu):
    assert padded_length(size, mtu) == len(transport.padded(bytes(size), mtu))


@SETTINGS
@given(st.binary(min_size=32, max_size=32), receivers, counters, batches, mtus)
def test_seal_and_open_batches_identical_and_as_the_engine(key, receiver, first, batch, mtu):
    first = min(first, MAX - max(len(batch) - 1, 0))
    packets = [data(size, seed) for size, seed in batch]
    py, cy = keys(key)
    sealed = cy.seal_batch(receiver, first, packets, mtu)
    assert sealed == py.seal_batch(receiver, first, packets, mtu)
    assert sealed == [engine_datagram(key, receiver, first + i, p, mtu)
                      for i, p in enumerate(packets)]
    opened = cy.open_batch(sealed)
    assert opened == py.open_batch(sealed)
    assert opened == [(WG_OK, transport.padded(p, mtu)) for p in packets]
    for d, (_, plain) in zip(sealed, opened):
        assert transport.open_(key, transport.parse_header(d)[1], d) == plain


@SETTINGS
@given(st.binary(min_size=32, max_size=32), counters, st.integers(0, 3000), st.integers(0, 2**32),
       st.integers(0, 2**40))
def test_a_flipped_bit_anywhere(key, counter, size, seed, where):
    """Counter, ciphertext or tag: WG_BAD_TAG (transport.open_: None). The
    type/reserved bytes: WG_MALFORMED. The receiver index is not covered by
    the tag (WireGuard's: the caller picked the key by it): still WG_OK."""
    py, cy = keys(key)
    packet = data(size, seed)
    d = bytearray(cy.seal_batch(7, counter, [packet])[0])
    bit = where % (len(d) * 8)
    d[bit // 8] ^= 1 << (bit % 8)
    d = bytes(d)
    got = cy.open_batch([d])
    assert got == py.open_batch([d])
    pos = bit // 8
    if pos < 4:
        assert got == [(WG_MALFORMED, b"")]
    elif pos < 8:
        assert got == [(WG_OK, transport.padded(packet))]
    else:
        assert got == [(WG_BAD_TAG, b"")]
        assert transport.open_(key, transport.parse_header(d)[1], d) is None


@SETTINGS
@given(st.binary(min_size=32, max_size=32), st.integers(0, 2000), st.integers(0, 2**32),
       st.integers(0, 4000))
def test_truncated_or_extended_datagrams(key, size, seed, cut):
    py, cy = keys(key)
    d = cy.seal_batch(1, 5, [data(size, seed)])[0]
    short = d[:cut % (len(d) + 1)]
    if len(short) == len(d):
        short = d + b"\0"           # one byte too many: the tag moves
    got = cy.open_batch([short])
    assert got == py.open_batch([short])
    assert got == [(WG_MALFORMED if len(short) < WG_OVERHEAD else WG_BAD_TAG, b"")]


def test_malformed_shapes():
    key = bytes(range(32))
    py, cy = keys(key)
    good = cy.seal_batch(3, 9, [b"x" * 100])[0]
    cases = [b"", b"\x04", good[:31], b"\x01" + good[1:], good[:1] + b"\x01" + good[2:],
             good[:3] + b"\x80" + good[4:], b"\x04\0\0\0" + bytes(65533), good]
    got = cy.open_batch(cases)
    assert got == py.open_batch(cases)
    assert [v for v, _ in got] == [WG_MALFORMED] * 6 + [WG_MALFORMED, WG_OK]   # 65537 bytes: too long


def slot_buffers(packets, stride):
    buf = bytearray(random.Random(len(packets)).randbytes(len(packets) * stride))
    for i, p in enumerate(packets):
        buf[i * stride + WG_HEADER:i * stride + WG_HEADER + len(p)] = p
    return buf, array.array("I", [len(p) for p in packets])


@SETTINGS
@given(st.binary(min_size=32, max_size=32), receivers, counters,
       st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 2**32)), max_size=8),
       st.sampled_from([0, 1420, 1280]), st.lists(st.integers(-1, 2**20), max_size=8))
def test_slots_in_place_identical(key, receiver, first, batch, mtu, damage):
    """seal_slots writes exactly seal_batch's datagrams (the rest of the
    buffer untouched); open_slots of them, some damaged, leaves identical
    buffers, lengths and verdicts in both twins."""
    first = min(first, MAX - max(len(batch) - 1, 0))
    stride = 2048 + WG_OVERHEAD
    packets = [data(size, seed) for size, seed in batch]
    py, cy = keys(key)
    results = []
    for k in (py, cy):
        buf, lens = slot_buffers(packets, stride)
        before = bytes(buf)
        total = k.seal_slots(buf, lens, len(packets), stride, receiver, first, mtu)
        sealed = [bytes(buf[i * stride:i * stride + lens[i]]) for i in range(len(packets))]
        assert sealed == k.seal_batch(receiver, first, packets, mtu)
        assert total == sum(map(len, sealed))
        for i in range(len(packets)):       # nothing past the datagram moved
            assert buf[i * stride + lens[i]:(i + 1) * stride] == before[i * stride + lens[i]:(i + 1) * stride]
        for i, dmg in enumerate(damage[:len(packets)]):
            if dmg >= 0:
                n = lens[i]
                if dmg & 1:
                    lens[i] = dmg % (n + 1)             # truncated
                else:
                    buf[i * stride + (dmg >> 1) % n] ^= 1 + (dmg & 0xFE) % 255
        verdicts = bytearray(len(packets))
        ok = k.open_slots(buf, lens, verdicts, len(packets), stride)
        results.append((bytes(buf), list(lens), bytes(verdicts), ok))
        for i in range(len(packets)):
            if verdicts[i] == WG_OK:
                assert buf[i * stride + WG_HEADER:i * stride + WG_HEADER + lens[i]] == \
                    transport.padded(packets[i], mtu)
    assert results[0] == results[1]


def test_open_slots_wipes_what_did_not_authenticate():
    key = bytes(32)
    stride = 256
    for k in keys(key):
        buf, lens = slot_buffers([b"secret" * 20], stride)
        k.seal_slots(buf, lens, 1, stride, 1, 1)
        buf[WG_HEADER + 3] ^= 1
        n = lens[0]
        verdicts = bytearray(1)
        assert k.open_slots(buf, lens, verdicts, 1, stride) == 0
        assert (verdicts[0], lens[0]) == (WG_BAD_TAG, 0)
        assert buf[WG_HEADER:n] == bytes(n - WG_HEADER)


def test_counter_limits():
    key = bytes(range(32))
    py, cy = keys(key)
    for first, n in [(MAX, 1), (MAX - 2, 3), (0, 1)]:
        got = cy.seal_batch(1, first, [b"a"] * n)
        assert got == py.seal_batch(1, first, [b"a"] * n)
        assert got[-1] == engine_datagram(key, 1, first + n - 1, b"a")
        assert cy.open_batch(got) == [(WG_OK, transport.padded(b"a"))] * n


def errors(call):
    """(type, message) of what call() raises in each twin."""
    out = []
    for k in keys(bytes(32)):
        with pytest.raises(Exception) as info:
            call(k)
        out.append((type(info.value), str(info.value)))
    return out


@pytest.mark.parametrize("call", [
    lambda k: k.seal_batch(-1, 0, [b""]),
    lambda k: k.seal_batch(2**32, 0, [b""]),
    lambda k: k.seal_batch(0, -1, [b""]),
    lambda k: k.seal_batch(0, MAX, [b"", b""]),
    lambda k: k.seal_batch(0, MAX + 1, []),
    lambda k: k.seal_batch(0, 0, [b"x" * (WG_MAX_PACKET + 1)]),
    lambda k: k.seal_batch(0, 0, [bytearray(3)]),
    lambda k: k.seal_batch(0, 0, [b""], -1),
    lambda k: k.seal_batch(0, 0, [b""], 65536),
    lambda k: k.open_batch([memoryview(bytes(40))]),
    lambda k: k.seal_slots(bytearray(100), array.array("I", [0]), 1, 31, 0, 0),
    lambda k: k.seal_slots(bytes(100), array.array("I", [0]), 1, 64, 0, 0),
    lambda k: k.seal_slots(bytearray(100), array.array("H", [0]), 1, 64, 0, 0),
    lambda k: k.seal_slots(bytearray(100), array.array("I", [0]), 2, 64, 0, 0),
    lambda k: k.seal_slots(bytearray(100), array.array("I", [0, 0]), 2, 64, 0, 0),
    lambda k: k.seal_slots(bytearray(128), array.array("I", [0, 33]), 2, 64, 0, 0),
    lambda k: k.seal_slots(bytearray(128), array.array("I", [0, 1]), 2, 64, 0, MAX),
    lambda k: k.seal_slots(None, array.array("I", [0]), 1, 64, 0, 0),
    lambda k: k.open_slots(bytearray(128), array.array("I", [0, 65]), bytearray(2), 2, 64),
    lambda k: k.open_slots(bytearray(128), array.array("I", [0, 0]), bytearray(1), 2, 64),
    lambda k: k.open_slots(bytearray(128), array.array("I", [0, 0]), None, 2, 64),
])
def test_caller_mistakes_raise_the_same(call):
    py, cy = errors(call)
    assert py == cy


def test_a_misfit_slot_writes_nothing():
    for k in keys(bytes(32)):
        buf, lens = slot_buffers([b"a" * 10, b"b" * 40], 64)
        before, lens_before = bytes(buf), list(lens)
        with pytest.raises(ValueError, match="packet 1 does not fit"):
            k.seal_slots(buf, lens, 2, 64, 0, 0)
        assert (bytes(buf), list(lens)) == (before, lens_before)


def test_keys_stay_hidden():
    key = bytes.fromhex("c0ffee" * 10 + "c0c0")
    for cls in (twin.WgKey for twin in both()):
        k = cls(key)
        assert repr(k) == "<WgKey>" and "c0ffee" not in repr(k)
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(k)
        k.close()
        assert repr(k) == "<WgKey closed>"
        with pytest.raises(ValueError, match="WgKey closed"):
            k.seal_batch(0, 0, [b""])
        with pytest.raises(ValueError, match="WgKey closed"):
            k.open_batch([])
        k.close()                               # idempotent
        for bad in (key[:31], key + b"\0"):
            with pytest.raises(ValueError) as info:
                cls(bad)
            assert "c0ffee" not in str(info.value)
        with pytest.raises(TypeError):
            cls(bytearray(key))


# RFC 8439 section 2.8.2: the AEAD_CHACHA20_POLY1305 test vector.
RFC_KEY = bytes(range(0x80, 0xA0))
RFC_NONCE = bytes.fromhex("070000004041424344454647")
RFC_AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
RFC_PLAIN = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one "
             b"tip for the future, sunscreen would be it.")
RFC_CIPHER = bytes.fromhex(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116")
RFC_TAG = bytes.fromhex("1ae10b594f09e26a7e902ecbd0600691")


def test_rfc8439_aead_vector_through_both_twins():
    for twin in both():
        t = twin.testing
        assert t.wg_aead(RFC_KEY, RFC_NONCE, RFC_AAD, RFC_PLAIN) == RFC_CIPHER + RFC_TAG
        assert t.wg_aead(RFC_KEY, RFC_NONCE, RFC_AAD, RFC_CIPHER + RFC_TAG, True) == RFC_PLAIN
        bad = bytearray(RFC_CIPHER + RFC_TAG)
        bad[-1] ^= 1
        assert t.wg_aead(RFC_KEY, RFC_NONCE, RFC_AAD, bytes(bad), True) is None
        assert t.wg_aead(RFC_KEY, RFC_NONCE, RFC_AAD[:-1], RFC_CIPHER + RFC_TAG, True) is None


def test_wireguard_shape_through_the_vector_entry():
    """WgKey's datagram body is the plain AEAD with WireGuard's nonce and no
    AD, as the test-only entry computes it."""
    key = bytes(range(32))
    for twin in both():
        d = twin.WgKey(key).seal_batch(9, 0x0102030405060708, [b"hello"])[0]
        nonce = bytes(4) + (0x0102030405060708).to_bytes(8, "little")
        assert d[WG_HEADER:] == twin.testing.wg_aead(key, nonce, b"", transport.padded(b"hello"))


def test_two_directions_on_two_threads_and_keys_in_parallel():
    """The compiled loops release the GIL: a key's seal and open sides run
    at once on two threads, other keys on others; results as the reference."""
    py_mod, cy_mod = both()
    key = bytes(range(32))
    ref = py_mod.WgKey(key)
    packets = [data(1400, i) for i in range(64)]
    sealed = ref.seal_batch(5, 1000, packets, 1420)
    k = cy_mod.WgKey(key)
    others = [cy_mod.WgKey(bytes([i]) * 32) for i in range(2)]
    failures: list = []

    def run(fn, expect):
        for _ in range(30):
            if fn() != expect:
                failures.append(fn)

    jobs = [(lambda: k.seal_batch(5, 1000, packets, 1420), sealed),
            (lambda: k.open_batch(sealed), [(WG_OK, transport.padded(p, 1420)) for p in packets])]
    jobs += [(lambda o=o: o.open_batch(o.seal_batch(1, 1, packets)),
              [(WG_OK, transport.padded(p)) for p in packets]) for o in others]
    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_interop_with_two_engines_after_a_real_handshake(monkeypatch):
    """Two protocol engines handshake in memory (tests.support.wireguard);
    the transport keys they derive (captured as the engine makes its
    keypairs) work in both WgKey twins both ways: the engine's datagrams
    open, and datagrams sealed by WgKey under the next counters are accepted
    by the other engine, replay window and all."""
    from tests.support.wireguard import A_ADDR, icmp_echo, make_pair
    from udpoverlay.wireguard import session

    made = []
    real_init = session.Keypair.__init__

    def capture(self, keys, now, *cipher):
        made.append(keys)
        real_init(self, keys, now, *cipher)

    monkeypatch.setattr(session.Keypair, "__init__", capture)
    p = make_pair()
    first = icmp_echo("198.19.1.1", "198.19.2.1", 7, 0, b"hello")
    assert p.packets(p.deliver(p.a.send(p.a_peer_b, first, p.clock.now), "b"), "b") == [first]
    a_keys = next(k for k in made if k.is_initiator)
    kp = p.a_peer_b.keypairs.current
    assert kp is not None and kp.remote_index == a_keys.remote_index

    packets = [icmp_echo("198.19.1.1", "198.19.2.1", 7, seq, data(seq * 50, seq))
               for seq in range(1, 6)]
    engine_out = [d for pkt in packets for d, _ in p.a.send(p.a_peer_b, pkt, p.clock.now)]
    for twin in both():
        opened = twin.WgKey(a_keys.send_key).open_batch(engine_out)
        assert opened == [(WG_OK, transport.padded(pkt)) for pkt in packets]
    assert p.packets(p.deliver([(d, A_ADDR) for d in engine_out], "b"), "b") == packets

    for twin in both():
        start = kp.send_counter
        ours = twin.WgKey(a_keys.send_key).seal_batch(a_keys.remote_index, start, packets)
        kp.send_counter += len(ours)
        got = [p.b.receive(d, A_ADDR, p.clock.now) for d in ours]
        assert [(r.verdict, r.packet) for r in got] == [("data", pkt) for pkt in packets]
        replayed = p.b.receive(ours[0], A_ADDR, p.clock.now)
        assert replayed.verdict != "data"
