"""wire.py is the one home of the data plane's constants: the compiled
twin's enums (wire.pxd, exported by its testing part) must equal it."""

from __future__ import annotations

from udpoverlay.dataplane import wire


def test_twin_constants_equal_wire_py(impl):
    exported = impl.testing.WIRE
    assert exported, "the twin exports no constants"
    assert {k: getattr(wire, k) for k in exported} == exported
    # every integer constant of wire.py is checked, none is only in one place
    ints = {k for k, v in vars(wire).items() if k.isupper() and isinstance(v, int)}
    assert ints == set(exported)


def test_verdict_names_follow_the_verdicts():
    assert len(wire.VERDICT_NAMES) == wire.N_VERDICTS
    for i, name in enumerate(wire.VERDICT_NAMES):
        assert getattr(wire, name.upper()) == i
    assert wire.MODES == {"udp": wire.MODE_UDP, "vxlan": wire.MODE_VXLAN}


def test_peer_record_layout():
    import struct
    assert struct.calcsize(wire.PEER_SPEC_FORMAT) == wire.PEER_SPEC_LEN
