"""Never a silent slow path: when the compiled twin does not import (a
corrupt or glibc-mismatched .so), the daemon says so in a WARNING naming
the import error, status shows it, and --require-fast-path refuses to start.
A broken extension is simulated by blocking its import in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BLOCK = "import sys; sys.modules['udpoverlay.dataplane._c'] = None\n"
ENV = {k: v for k, v in os.environ.items()
       if k not in ("UDPOVERLAY_REQUIRE_EXTENSION", "UDPOVERLAY_NO_EXTENSIONS")}


def _py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=ENV)


def test_a_broken_extension_is_a_warning_with_the_error():
    r = _py("import logging, json\n"
            "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
            "from udpoverlay import dataplane\n"
            "dataplane.twins.check_fast_path(False)\n"
            "print(json.dumps([dataplane.IMPLEMENTATION, dataplane.FALLBACK]))\n")
    assert r.returncode == 0, r.stderr
    impl, error = json.loads(r.stdout)
    assert impl == "python" and "udpoverlay.dataplane._c" in error
    warnings = [line for line in r.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and error in warnings[0] and "--require-fast-path" in warnings[0]


def test_require_fast_path_refuses_in_one_line_exit_2():
    r = _py("from udpoverlay.cli import main\n"
            "sys.exit(main(['run', '--public-ip', '127.0.0.1', '--subnet', '198.19.1.0/24', "
            "'--network', '198.19.0.0/16', '--require-fast-path']))\n")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "--require-fast-path" in lines[0] and "did not load" in lines[0]


def test_a_loaded_or_chosen_twin_is_no_fallback():
    """Chosen on purpose (UDPOVERLAY_NO_EXTENSIONS) is not a fallback."""
    r = subprocess.run([sys.executable, "-c", "from udpoverlay import dataplane; "
                        "print(dataplane.FALLBACK)"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, env=dict(ENV, UDPOVERLAY_NO_EXTENSIONS="1"))
    assert r.returncode == 0 and r.stdout.strip() == "None", r.stderr


def test_status_text_names_the_fallback():
    from udpoverlay.status import format_status
    text = format_status({"implementation": "python", "fast_path_error": "bad ELF header"})
    assert "did not load (bad ELF header)" in text
    assert "did not load" not in format_status({"implementation": "cython",
                                                 "fast_path_error": None})
