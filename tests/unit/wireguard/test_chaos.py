"""Two engines over a hostile in-memory network (Hypothesis): datagrams
dropped, duplicated, reordered, the clock jumping. Safety: nothing raises,
every verdict is a known one, no packet is delivered twice or invented.
Liveness: once the network behaves, fresh packets get through both ways."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.wireguard import A_ADDR, B_ADDR, icmp_echo, make_pair
from udpoverlay.wireguard import RECEIVE_VERDICTS

A_IP, B_IP = "198.19.1.1", "198.19.2.1"

_actions = st.lists(st.one_of(
    st.tuples(st.just("send"), st.sampled_from("ab")),
    st.tuples(st.just("deliver"), st.integers(0, 50)),
    st.tuples(st.just("dup"), st.integers(0, 50)),
    st.tuples(st.just("drop"), st.integers(0, 50)),
    st.tuples(st.just("advance"), st.sampled_from([0.01, 0.5, 2.0, 5.5, 11.0, 30.0, 121.0, 200.0])),
    st.tuples(st.just("tick"), st.sampled_from("ab")),
), max_size=80)


class Net:
    def __init__(self, pair) -> None:
        self.p = pair
        self.flying: list[tuple[str, bytes]] = []
        self.sent: dict[str, set[bytes]] = {"a": set(), "b": set()}
        self.got: dict[str, list[bytes]] = {"a": [], "b": []}
        self.seq = 0

    def engine(self, name):
        return self.p.a if name == "a" else self.p.b

    def put(self, to: str, datagrams) -> None:
        self.flying += [(to, d) for d, _ in datagrams]

    def send(self, frm: str) -> bytes:
        self.seq += 1
        to = "b" if frm == "a" else "a"
        src, dst = (A_IP, B_IP) if frm == "a" else (B_IP, A_IP)
        pkt = icmp_echo(src, dst, 1, self.seq & 0xFFFF, self.seq.to_bytes(4, "big"))
        self.sent[to].add(pkt)
        peer = self.p.a_peer_b if frm == "a" else self.p.b_peer_a
        self.put(to, self.engine(frm).send(peer, pkt, self.p.clock.now))
        return pkt

    def deliver(self, i: int) -> None:
        if not self.flying:
            return
        to, data = self.flying.pop(i % len(self.flying))
        r = self.engine(to).receive(data, B_ADDR if to == "a" else A_ADDR, self.p.clock.now)
        assert r.verdict in RECEIVE_VERDICTS
        if r.packet is not None:
            assert r.packet in self.sent[to], "a packet nobody sent"
            assert r.packet not in self.got[to], "a packet delivered twice"
            self.got[to].append(r.packet)
        self.put("b" if to == "a" else "a", r.datagrams)

    def tick(self, name: str) -> None:
        self.put("b" if name == "a" else "a", self.engine(name).tick(self.p.clock.now).datagrams)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_actions)
def test_chaos_then_recovery(actions):
    net = Net(make_pair())
    for action, arg in actions:
        if action == "send":
            net.send(arg)
        elif action == "deliver":
            net.deliver(arg)
        elif action == "dup" and net.flying:
            net.flying.append(net.flying[arg % len(net.flying)])
        elif action == "drop" and net.flying:
            net.flying.pop(arg % len(net.flying))
        elif action == "advance":
            net.p.clock.advance(arg)
        elif action == "tick":
            net.tick(arg)
    # The network heals: stale datagrams arrive (and must be harmless), then
    # a fresh packet each way must get through within a bounded time.
    # A packet sent into a session the other side already dropped is lost
    # (WireGuard never retransmits data), so each side keeps sending.
    for i in range(len(net.flying)):
        net.deliver(0)
    fresh: dict[str, set[bytes]] = {"a": set(), "b": set()}

    def through(side: str) -> bool:
        return any(pkt in fresh[side] for pkt in net.got[side])

    for _ in range(400):  # 200 s of simulated time at most
        fresh["b"].add(net.send("a"))
        fresh["a"].add(net.send("b"))
        for _ in range(1000):
            if not net.flying:
                break
            net.deliver(0)
        if through("a") and through("b"):
            break
        net.p.clock.advance(0.5)
        net.tick("a")
        net.tick("b")
    assert through("a") and through("b"), (dict(net.p.a.counters), dict(net.p.b.counters))
