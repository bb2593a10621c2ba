"""flanneld's flags with flanneld's meanings: every `run` flag also from
FLANNELD_<FLAG>, the command line winning, Go's spellings (`-flag=value`,
`--bool=false`, `-v=2`), and bad values refused in one line with exit 2
before anything is created or written (no root, no etcd needed)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

from udpoverlay.cli import build_parser, main, parse_args, run_options
from udpoverlay.config import envflags
from udpoverlay.config.flags import FLAGS, by_name
from udpoverlay.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
STATIC = ["--subnet", "198.19.1.0/24", "--network", "198.19.0.0/16"]
EP = "http://198.18.0.254:2379"

# Every row of the flag table (config/flags.py): (an environment value, the
# parsed attribute it must give). A row without a sample here fails
# test_every_flag_is_covered; the variable and the aliases come from the row.
SAMPLES: dict[str, tuple[str, object]] = {
    "--iface": ("eth1,198.18.0.7", ["eth1", "198.18.0.7"]),
    "--iface-regex": ("^eth[0-9]{1,2}$,^en", ["^eth[0-9]{1,2}$", "^en"]),
    "--iface-can-reach": ("198.18.0.254", "198.18.0.254"),
    "--public-ip": ("198.18.9.9", "198.18.9.9"),
    "--port": ("9000", "9000"),
    "--tun": ("flannel0", "flannel0"),
    "--subnet": ("198.19.7.0/24", "198.19.7.0/24"),
    "--network": ("198.19.0.0/16", "198.19.0.0/16"),
    "--peer": ("198.18.0.2=198.19.2.0/24,vtep-mac=02:00:00:00:00:02,198.18.0.3=198.19.3.0/24",
               ["198.18.0.2=198.19.2.0/24,vtep-mac=02:00:00:00:00:02",
                "198.18.0.3=198.19.3.0/24"]),
    "--mtu": ("1400", "1400"),
    "--backend": ("vxlan", "vxlan"),
    "--private-key-file": ("/etc/udpoverlay/wg.key", "/etc/udpoverlay/wg.key"),
    "--vni": ("7", "7"),
    "--vtep-mac": ("02:00:00:00:00:09", "02:00:00:00:00:09"),
    "--direct-routing": ("true", True),
    "--no-offload": ("1", True),
    "--no-udp-offload": ("true", True),
    "--threads": ("TRUE", True),
    "--queues": ("2", "2"),
    "--ip-masq": ("true", True),
    "--iptables-forward-rules": ("false", False),
    "--iptables-resync": ("11", "11"),
    "--ip-masq-fully-random-disable": ("t", True),
    "--enable-nftables": ("1", True),
    "--ip-blackhole-route": ("true", True),
    "--healthz-ip": ("127.0.0.1", "127.0.0.1"),
    "--healthz-port": ("8081", "8081"),
    "--metrics-per-peer": ("false", False),
    "--etcd-endpoints": (EP, EP),
    "--etcd-prefix": ("/x/network", "/x/network"),
    "--etcd-cafile": ("/etc/ca.pem", "/etc/ca.pem"),
    "--etcd-certfile": ("/etc/c.pem", "/etc/c.pem"),
    "--etcd-keyfile": ("/etc/k.pem", "/etc/k.pem"),
    "--etcd-username": ("flannel", "flannel"),
    "--etcd-password": ("s3cret", "s3cret"),
    "--subnet-file": ("/tmp/x.env", "/tmp/x.env"),
    "--lease-ttl": ("600", "600"),
    "--subnet-lease-renew-margin": ("30", "30"),
    "--v": ("3", 3),
    "--log-format": ("json", "json"),
    "--env-file": (os.devnull, os.devnull),    # read at start: must exist
    "--io": ("epoll", "epoll"),
    "--peers-file": ("/etc/udpoverlay/peers.toml", "/etc/udpoverlay/peers.toml"),
    "--resolve-interval": ("30", "30"),
    "--strict-peers": ("true", True),
    "--keepalive": ("25", "25"),
    "--busy-poll-us": ("50", "50"),
    "--require-fast-path": ("true", True),
}
ALIASES = {alias: row.name for row in FLAGS for alias in row.aliases}


def _run_actions() -> list[argparse.Action]:
    run = build_parser().run_parser   # type: ignore[attr-defined]
    return [a for a in run._actions if not isinstance(a, argparse._HelpAction)]


def _args(argv, env=None):
    return parse_args(["run", *argv], env or {})


def test_every_flag_is_covered():
    assert {row.name for row in FLAGS} == set(SAMPLES)
    # the parser is generated from the table: no flag of its own
    flags = {o for a in _run_actions() for o in a.option_strings if o.startswith("--")}
    assert flags == set(SAMPLES) | set(ALIASES)
    assert ALIASES == {"--underlay-iface": "--iface", "--verbose": "--v"}


@pytest.mark.parametrize("flag", sorted(SAMPLES))
def test_every_flag_from_its_flanneld_variable(flag):
    value, want = SAMPLES[flag]
    var = "FLANNELD_" + flag[2:].upper().replace("-", "_")
    assert envflags.env_name(flag) == var == by_name(flag).env
    [action] = [a for a in _run_actions() if flag in a.option_strings]
    args, sources = _args([], {var: value})
    assert getattr(args, action.dest) == want
    assert sources[flag] == var
    # and nothing comes from a variable that is not set
    plain, none = _args([], {})
    assert getattr(plain, action.dest) != want and none == {}


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_alias_variables(alias):
    flag = ALIASES[alias]
    value, want = SAMPLES[flag]
    [action] = [a for a in _run_actions() if flag in a.option_strings]
    args, _ = _args([], {envflags.env_name(alias): value})
    assert getattr(args, action.dest) == want


def test_a_handful_from_the_environment_make_the_options():
    env = {"FLANNELD_IFACE": "eth0,198.18.0.1", "FLANNELD_PUBLIC_IP": "198.18.9.9",
           "FLANNELD_ETCD_ENDPOINTS": f"{EP},http://198.18.0.253:2379",
           "FLANNELD_IP_MASQ": "true", "FLANNELD_IPTABLES_FORWARD_RULES": "false",
           "FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "30", "FLANNELD_ETCD_USERNAME": "u",
           "FLANNELD_ETCD_PASSWORD": "p", "FLANNELD_V": "2", "FLANNELD_TUN": "flannel0",
           "FLANNELD_IPTABLES_RESYNC": "7", "FLANNELD_HEALTHZ_PORT": "8081",
           "FLANNELD_KUBE_API_URL": "https://x",        # flanneld's, not ours: a WARNING
           "FLANNELD_SUBNET": ""}                       # empty: ignored, as flanneld
    o = run_options(_args([], env)[0])
    assert o.cluster and o.endpoints == (EP, "http://198.18.0.253:2379")
    assert o.ifaces == ("eth0", "198.18.0.1") and o.tun == "flannel0"
    assert o.public_ip == ipaddress.IPv4Address("198.18.9.9") and o.bind_ip is None
    assert o.ip_masq is True and o.iptables_forward_rules is False
    assert (o.renew_margin, o.iptables_resync, o.healthz_port) == (1800, 7, 8081)
    assert (o.etcd_username, o.etcd_password, o.verbosity) == ("u", "p", 2)


def test_command_line_wins():
    env = {"FLANNELD_PUBLIC_IP": "198.18.9.9", "FLANNELD_IFACE": "eth1,eth2",
           "FLANNELD_IP_MASQ": "true", "FLANNELD_PEER": "198.18.0.5=198.19.5.0/24",
           "FLANNELD_MTU": "10"}
    o = run_options(_args([*STATIC, "--public-ip", "198.18.0.1", "--underlay-iface", "eth0",
                           "--ip-masq=false", "--peer", "198.18.0.2=198.19.2.0/24",
                           "--mtu=1400"], env)[0])
    assert str(o.public_ip) == "198.18.0.1" and o.ifaces == ("eth0",)
    assert o.ip_masq is False and o.mtu == 1400
    assert [str(p.public_ip) for p in o.peers] == ["198.18.0.2"]   # not merged with env


@pytest.mark.parametrize("argv, level", [
    (["-v=2"], 2), (["-v", "2"], 2), (["--v=2"], 2), (["-v2"], 2), (["-v"], 2),
    (["-v=0"], 0), (["--verbose", "1"], 1), (["-v=5"], 5), ([], 0),
])
def test_verbosity_levels(argv, level):
    assert run_options(_args([*STATIC, *argv])[0]).verbosity == level


def test_go_spelling_single_dash():
    o = run_options(_args(["-iface=eth0", "-public-ip", "198.18.0.1", "-ip-masq",
                           "-subnet=198.19.1.0/24", "-network", "198.19.0.0/16"])[0])
    assert o.ifaces == ("eth0",) and str(o.public_ip) == "198.18.0.1" and o.ip_masq


@pytest.mark.parametrize("text, value", [
    ("true", True), ("True", True), ("1", True), ("t", True),
    ("false", False), ("FALSE", False), ("0", False), ("f", False),
])
def test_booleans(text, value):
    assert envflags.parse_bool(text) is value
    assert run_options(_args([*STATIC, f"--ip-masq={text}"])[0]).ip_masq is value


@pytest.mark.parametrize("argv, env, needle", [
    ([], {"FLANNELD_IP_MASQ": "maybe"}, "FLANNELD_IP_MASQ"),
    (["--ip-masq=yes please"], {}, "bad boolean"),
    ([], {"FLANNELD_V": "loud"}, "FLANNELD_V"),
    ([], {"FLANNELD_MTU": "10"}, "FLANNELD_MTU"),
    ([], {"FLANNELD_IFACE": "eth0,198.18.0.300"}, "FLANNELD_IFACE"),
    ([], {"FLANNELD_IFACE_REGEX": "(eth"}, "bad regular expression"),
    ([], {"FLANNELD_PUBLIC_IP": "198.18.0.300"}, "FLANNELD_PUBLIC_IP"),
    ([], {"FLANNELD_HEALTHZ_PORT": "-1"}, "--healthz-port"),
    ([], {"FLANNELD_IPTABLES_RESYNC": "0"}, "FLANNELD_IPTABLES_RESYNC"),
    ([], {"FLANNELD_BACKEND": "geneve"}, "FLANNELD_BACKEND"),
    (["-v=11"], {}, "out of range"),
    (["--etcd-endpoints", EP, "--backend", "vxlan"], {}, "come from etcd"),
    (["--etcd-endpoints", EP], {"FLANNELD_VNI": "2"}, "FLANNELD_VNI"),
    (["--etcd-endpoints", EP], {"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "1440"}, "1-1439"),
    (["--etcd-endpoints", EP, "--etcd-username", "u"], {}, "go together"),
])
def test_bad_values_one_line_exit_2(argv, env, needle, capsys, monkeypatch):
    for k in [k for k in os.environ if k.startswith("FLANNELD_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    base = [] if "--etcd-endpoints" in argv else STATIC
    with pytest.raises(SystemExit) as ei:
        sys.exit(main(["run", *base, *argv]))
    assert ei.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("udpoverlay: error: "), lines
    assert needle in lines[0], lines


def test_split_list_keeps_peer_options_and_regex_counts():
    assert envflags.split_list("--iface", " eth0 , ,eth1") == ["eth0", "eth1"]
    assert envflags.split_list("--iface-regex", "a{1,2},b") == ["a{1,2}", "b"]
    assert envflags.split_list("--peer", "1.2.3.4=5.6.7.0/24,vtep-mac=02:00:00:00:00:01") == \
        ["1.2.3.4=5.6.7.0/24,vtep-mac=02:00:00:00:00:01"]


def test_status_takes_tun_not_iface(capsys):
    args, _ = parse_args(["status", "--tun", "flannel0"], {})
    assert args.tun == "flannel0"
    with pytest.raises(SystemExit) as ei:
        parse_args(["status", "--iface", "udpov0"], {})
    assert ei.value.code == 2
    assert "--iface" in capsys.readouterr().err


def test_run_options_fields_for_the_node_rules():
    o = run_options(_args([*STATIC, "--ip-masq", "--iptables-forward-rules=false",
                           "--ip-masq-fully-random-disable", "--ip-blackhole-route",
                           "--iptables-resync", "9", "--healthz-ip", "127.0.0.1",
                           "--healthz-port", "8081"])[0])
    assert (o.ip_masq, o.iptables_forward_rules, o.ip_masq_fully_random_disable,
            o.ip_blackhole_route, o.iptables_resync, o.healthz_ip, o.healthz_port) == \
        (True, False, True, True, 9, "127.0.0.1", 8081)
    d = run_options(_args(STATIC)[0])
    assert (d.ip_masq, d.iptables_forward_rules, d.iptables_resync, d.enable_nftables,
            d.direct_routing, d.tun, d.ifaces) == (False, True, 5, False, False, "udpov0", ())


def test_direct_routing_needs_vxlan():
    o = run_options(_args([*STATIC, "--backend", "vxlan", "--direct-routing"])[0])
    assert o.direct_routing
    with pytest.raises(ConfigError, match="vxlan"):
        run_options(_args([*STATIC, "--direct-routing"])[0])


def _tun_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


@pytest.mark.parametrize("extra, env", [
    (["--mtu", "10"], {}),
    (["--backend", "vxlan"], {}),
    ([], {"FLANNELD_IP_MASQ": "perhaps"}),
    ([], {"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "0"}),
    (["--iface", "198.18.0.999"], {}),
    (["-v=x"], {}),
])
def test_process_refuses_before_creating_or_writing(extra, env, tmp_path):
    """A real process against an etcd endpoint nobody serves: exit 2 with one
    line, no TUN device, no subnet file (nothing was created or written)."""
    tun = "uoflag" + os.urandom(3).hex()
    subnet_file = tmp_path / "subnet.env"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
    environ.update(env, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "udpoverlay", "--etcd-endpoints",
                        "http://198.18.0.254:1", "--tun", tun, "--subnet-file",
                        str(subnet_file), *extra], capture_output=True, text=True,
                       timeout=60, env=environ, cwd=str(ROOT))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("udpoverlay: error: ")
    assert r.stdout == ""
    assert not _tun_exists(tun) and not subnet_file.exists()


def test_variables_that_are_not_ours_are_named_never_silent(tmp_path, capsys):
    """A typo'd FLANNELD_* variable (environment or env file) is a WARNING
    with the setting it most likely meant; flanneld's own flags we lack are
    named as such; FLANNELD_KUBE_SUBNET_MGR=true cannot be ignored."""
    f = tmp_path / "flanneld.env"
    f.write_text("FLANNELD_IPTABLES_RESINC=3\nFLANNELD_PUBLIC_IPV6=2001:db8::1\n")
    f.chmod(0o600)
    args, _ = parse_args(["run", *STATIC, "--env-file", str(f)],
                         {"FLANNELD_IP_MAS": "true", "FLANNELD_NOTHING_LIKE_IT": "1",
                          "FLANNELD_EMPTY_TYPO": "", "FLANNELD_IP_MASQ": "false"})
    notes = args.variable_notes
    assert any("FLANNELD_IP_MAS (the environment)" in n and "did you mean FLANNELD_IP_MASQ?" in n
               for n in notes), notes
    assert any(f"FLANNELD_IPTABLES_RESINC ({f})" in n and "FLANNELD_IPTABLES_RESYNC" in n
               for n in notes), notes
    assert any("FLANNELD_PUBLIC_IPV6" in n and "flanneld's --public-ipv6" in n for n in notes)
    assert any("FLANNELD_NOTHING_LIKE_IT" in n and "did you mean" not in n for n in notes)
    assert not any("EMPTY_TYPO" in n or "FLANNELD_IP_MASQ " in n for n in notes)
    assert len(notes) == 4
    with pytest.raises(SystemExit) as exc:
        parse_args(["run"], {"FLANNELD_KUBE_SUBNET_MGR": "true"})
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "FLANNELD_KUBE_SUBNET_MGR=true" in err[0] and "--etcd-endpoints" in err[0]
    quiet, _ = parse_args(["run", *STATIC], {"FLANNELD_KUBE_SUBNET_MGR": "false"})
    assert any("flanneld's --kube-subnet-mgr" in n for n in quiet.variable_notes)


def test_a_typo_reaches_the_log_as_a_warning():
    """The WARNING is logged once logging is set up, before the daemon
    fails here on an interface that does not exist (nothing is created)."""
    env = {**os.environ, "FLANNELD_IP_MAS": "true"}
    r = subprocess.run([sys.executable, "-m", "udpoverlay", "run", *STATIC, "--iface", "nosuch0"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert r.returncode != 0
    warnings = [line for line in r.stderr.splitlines() if "WARNING" in line]
    assert any("FLANNELD_IP_MAS (the environment)" in w and "FLANNELD_IP_MASQ?" in w
               for w in warnings), r.stderr


def test_every_valued_flag_names_its_unit_or_kind_in_help():
    """No metavar that only repeats the flag's name (LEASE_TTL): a unit
    (SECONDS, BYTES, MINUTES, ...) or what the value is (FILE, IP, CIDR)."""
    for row in FLAGS:
        if row.kind == "bool" or row.choices:
            continue
        assert row.metavar, row.name
        assert row.metavar != row.name.lstrip("-").upper().replace("-", "_"), row.name
