"""The wheel a host installs: contrib/build-wheels.sh (the Dockerfile's
build stage runs the same script) builds udpoverlay's wheel with the
compiled fast path and a wheel of every dependency; a fresh venv installs
them with no index, no Cython, no compiler on PATH and CC=false, and the
installed `udpoverlay --version` reports the compiled (cython) fast path.
A higher `udpoverlay` offered by an index (here: a find-links directory
from the environment) is never built in, and the wheel carries the LICENSE.
Slow (~30-60 s: a real Cython build), marked `slow`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow


def _no_compiler_env(path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "PYTHON", "UDPOVERLAY_", "VIRTUAL_ENV"))}
    env.update(PATH=path, CC="false", CXX="false", LDSHARED="false",
               PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _impostor(directory: Path) -> Path:
    """A wheel named udpoverlay with a higher version, as anyone could upload
    to an index under the name."""
    directory.mkdir()
    path = directory / "udpoverlay-99.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("udpoverlay-99.0.dist-info/METADATA",
                   "Metadata-Version: 2.1\nName: udpoverlay\nVersion: 99.0\n")
        z.writestr("udpoverlay-99.0.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("udpoverlay-99.0.dist-info/RECORD", "")
    return path


def test_wheel_installs_without_compiler_and_runs_the_compiled_path(tmp_path):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    wheels = tmp_path / "wheelhouse"
    wheels.mkdir()
    (wheels / "udpoverlay-0.0.1-cp311-cp311-linux_x86_64.whl").write_bytes(b"stale")
    impostor = _impostor(tmp_path / "index")
    built = subprocess.run(["sh", str(ROOT / "contrib/build-wheels.sh"), str(wheels)],
                           env=dict(os.environ, PYTHON=sys.executable,
                                    PIP_FIND_LINKS=str(impostor.parent)),
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert built.returncode == 0, built.stdout + built.stderr
    names = sorted(p.name for p in wheels.glob("*.whl"))
    ours = [n for n in names if n.startswith("udpoverlay-")]
    assert len(ours) == 1 and ours[0].startswith(f"udpoverlay-{version}-cp"), names
    assert built.stdout.strip() == str(wheels / ours[0])
    with zipfile.ZipFile(wheels / ours[0]) as z:
        licence = z.read(f"udpoverlay-{version}.dist-info/licenses/LICENSE").decode()
        metadata = z.read(f"udpoverlay-{version}.dist-info/METADATA").decode()
    assert licence == (ROOT / "LICENSE").read_text()
    assert "License-Expression: Apache-2.0" in metadata
    assert not [p for p in wheels.iterdir() if not p.name.endswith(".whl")], names   # no sdists
    for dep in ("udpoverlay-", "uvloop-", "python_pytun-", "pyroute2-", "aetcd-",
                "prometheus_client-", "grpcio-"):
        assert any(n.startswith(dep) for n in names), (dep, names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    bindir = str(venv / "bin")
    for tool in ("gcc", "cc", "cython", "x86_64-linux-gnu-gcc"):
        assert shutil.which(tool, path=bindir) is None, tool
    env = _no_compiler_env(bindir)
    inst = subprocess.run([str(venv / "bin/pip"), "install", "--no-index", "--find-links",
                           str(wheels), "udpoverlay"], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    py = str(venv / "bin/python")
    check = subprocess.run(
        [py, "-c", "import importlib.util as u, udpoverlay, udpoverlay.ops, udpoverlay.static, "
                   "udpoverlay.cluster.mode; print(u.find_spec('Cython'), udpoverlay.__file__)"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    spec, where = check.stdout.split()
    assert spec == "None" and where.startswith(str(venv)), check.stdout   # not the checkout
    version = subprocess.run([str(venv / "bin/udpoverlay"), "--version"], env=env,
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    assert "(fast path: cython)" in version.stdout, version.stdout
