"""--env-file: systemd's EnvironmentFile syntax, the precedence (command
line > environment > file), errors in one line naming FILE:LINE, and
SIGHUP's re-read (EnvReload): -v and --log-format live, every other change
logged once per SIGHUP as needing a restart, bad files keep the running
settings."""

from __future__ import annotations

import logging
import os
import time

import pytest

from tests.support.asyncutil import run
from tests.support.requirements import require
from udpoverlay.cli import main, parse_args, run_options
from udpoverlay.config import envflags
from udpoverlay.errors import ConfigError
from udpoverlay.ops import logs
from udpoverlay.ops.reload import EnvReload

STATIC = ["run", "--subnet", "198.19.1.0/24", "--network", "198.19.0.0/16"]


def test_systemd_syntax():
    text = ("# comment\n; also\n\n  FLANNELD_IFACE=eth1  \nFLANNELD_A='x y # not a comment'\n"
            'FLANNELD_B="say \\"hi\\" \\\\ $HOME"\nFLANNELD_C=one \\\ntwo\nEMPTY=\n')
    assert envflags.parse_env_file(text) == {
        "FLANNELD_IFACE": "eth1", "FLANNELD_A": "x y # not a comment",
        "FLANNELD_B": 'say "hi" \\ $HOME', "FLANNELD_C": "one two", "EMPTY": ""}
    for bad, line in (("FLANNELD_V\n", 1), ("# ok\n1BAD=x\n", 2), ("A='open\n", 1),
                      ('A="x" trailing\n', 1)):
        with pytest.raises(ValueError, match=f"f.env:{line}: "):
            envflags.parse_env_file(bad, "f.env")


def test_only_flanneld_variables_and_limits(tmp_path):
    f = tmp_path / "env"
    f.write_text("PATH=/evil\nFLANNELD_V=2\n")
    assert envflags.read_env_file(str(f)) == {"FLANNELD_V": "2"}
    f.write_bytes(b"FLANNELD_V=\xff\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        envflags.read_env_file(str(f))
    f.write_bytes(b"#" * (envflags.ENV_FILE_LIMIT + 1))
    with pytest.raises(ValueError, match="larger than"):
        envflags.read_env_file(str(f))
    with pytest.raises(ValueError, match=r"env file .*: cannot read it"):
        envflags.read_env_file(str(tmp_path / "missing"))


def test_precedence_command_line_environment_file(tmp_path):
    f = tmp_path / "env"
    f.write_text("FLANNELD_V=1\nFLANNELD_LOG_FORMAT=json\nFLANNELD_MTU=1300\n"
                 "FLANNELD_ENV_FILE=/elsewhere\n")
    args, src = parse_args([*STATIC, "--env-file", str(f), "-v", "3"], {"FLANNELD_MTU": "1400"})
    assert (args.v, args.log_format, args.mtu) == (3, "json", "1400")
    assert src["--log-format"] == f"FLANNELD_LOG_FORMAT in {f}" and src["--mtu"] == "FLANNELD_MTU"
    # the file named by the environment works the same way
    args, _ = parse_args(STATIC, {"FLANNELD_ENV_FILE": str(f)})
    assert (args.v, args.mtu) == (1, "1300")


def test_bad_file_or_value_is_one_line_exit_2(tmp_path, capsys):
    f = tmp_path / "env"
    f.write_text("FLANNELD_HEALTHZ_PORT=99999\n")
    assert main([*STATIC, "--env-file", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"FLANNELD_HEALTHZ_PORT in {f}" in err, err
    f.write_text("garbage line\n")
    with pytest.raises(SystemExit) as exc:
        parse_args([*STATIC, "--env-file", str(f)])
    assert exc.value.code == 2
    assert f"{f}:1: not KEY=VALUE" in capsys.readouterr().err


@pytest.fixture
def live_logs():
    saved = (logs.current.verbosity, logs.current.fmt)
    yield
    logs.set_verbosity(saved[0])
    if logs.current.handler is not None:
        logs.set_format(saved[1])


def test_reload_applies_live_settings_and_names_the_rest(tmp_path, caplog, live_logs):
    f = tmp_path / "env"
    f.write_text("FLANNELD_V=0\nFLANNELD_IP_MASQ=false\nFLANNELD_ETCD_PASSWORD=old\n")
    argv = [*STATIC, "--env-file", str(f), "--mtu", "1400"]
    env: dict[str, str] = {}
    r = EnvReload(str(f), argv, env)
    r.baseline(run_options(parse_args(argv, env)[0]))
    assert r.start is not None
    f.write_text("FLANNELD_V=2\nFLANNELD_IP_MASQ=true\nFLANNELD_MTU=1300\n"
                 "FLANNELD_ETCD_PASSWORD=new\n")
    with caplog.at_level(logging.INFO, logger="udpoverlay"):
        run(r.reload())
        run(r.reload())
    msgs = [rec.getMessage() for rec in caplog.records]
    assert logs.current.verbosity == 2
    assert sum("log verbosity -v 2 (was 0)" in m for m in msgs) == 1      # applied once
    assert sum(f"FLANNELD_IP_MASQ changed in {f}, needs a restart" in m for m in msgs) == 2
    assert not any("FLANNELD_MTU" in m for m in msgs)      # --mtu on the command line wins
    pw = [m for m in msgs if "FLANNELD_ETCD_PASSWORD" in m]
    assert pw and not any("old" in m or "new" in m for m in pw)       # secrets not logged

    f.write_text("FLANNELD_V=lots\n")
    with pytest.raises(ConfigError, match="FLANNELD_V"):
        run(r.reload())
    assert logs.current.verbosity == 2                      # running settings kept
    f.unlink()
    with pytest.raises(ConfigError, match=r"env file .*: cannot read it"):
        run(r.reload())


def test_reload_without_env_file_or_with_foreign_argv(tmp_path, caplog):
    with caplog.at_level(logging.DEBUG, logger="udpoverlay"):
        run(EnvReload(None, STATIC, {}).reload())
        f = tmp_path / "env"
        f.write_text("FLANNELD_V=1\n")
        r = EnvReload(str(f), [*STATIC, "--env-file", str(f)], {})
        other = run_options(parse_args([*STATIC, "--mtu", "1000"], {})[0])
        r.baseline(other)            # argv that does not give the running options
        run(r.reload())
    msgs = " ".join(rec.getMessage() for rec in caplog.records)
    assert "no --env-file" in msgs and "will not re-read" in msgs and "not re-reading" in msgs


def test_env_file_others_could_change_is_refused_at_start_in_one_line(tmp_path, capsys):
    require(os.geteuid() == 0, "needs root (a file owned by another user)")
    f = tmp_path / "env"
    f.write_text("FLANNELD_V=1\n")
    f.chmod(0o666)
    assert main([*STATIC, "--env-file", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"env file {f}: refused: writable by group" in err
    f.chmod(0o644)
    os.chown(f, 65534, 65534)
    assert main([*STATIC, "--env-file", str(f)]) == 2
    assert "owned by uid 65534, not root" in capsys.readouterr().err


def test_reload_of_a_fifo_or_foreign_env_file_is_an_error_and_never_blocks(tmp_path, live_logs):
    require(os.geteuid() == 0, "needs root (a file owned by another user)")
    f = tmp_path / "env"
    f.write_text("FLANNELD_V=0\n")
    argv = [*STATIC, "--env-file", str(f)]
    r = EnvReload(str(f), argv, {})
    r.baseline(run_options(parse_args(argv, {})[0]))
    f.write_text("FLANNELD_V=3\n")
    os.chown(f, 65534, 65534)
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        run(r.reload())
    f.unlink()
    os.mkfifo(f, 0o600)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"not a regular file \(a FIFO\)"):
        run(r.reload())
    assert time.monotonic() - started < 2.0
    assert logs.current.verbosity == 0                      # running settings kept


def test_reload_names_a_typo_in_the_env_file(tmp_path, caplog, live_logs):
    f = tmp_path / "env"
    f.write_text("FLANNELD_V=0\n")
    f.chmod(0o600)
    argv = [*STATIC, "--env-file", str(f)]
    r = EnvReload(str(f), argv, {})
    with caplog.at_level(logging.INFO, logger="udpoverlay"):
        r.baseline(run_options(parse_args(argv, {})[0]))
        assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
        f.write_text("FLANNELD_V=0\nFLANNELD_IP_MAS=true\n")
        run(r.reload())
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1 and "SIGHUP: FLANNELD_IP_MAS" in warnings[0]
    assert "FLANNELD_IP_MASQ?" in warnings[0]
