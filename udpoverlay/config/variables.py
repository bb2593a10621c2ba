"""FLANNELD_* variables that are not ours: never silently ignored.

flanneld ignores unknown variables, so a typo (`FLANNELD_IP_MAS=true`) runs a
node without masquerade and nobody knows. We name each one in a WARNING,
with the setting it most likely meant. flanneld's own flags that udpoverlay
does not have are named as such; one of them cannot be ignored: with
`FLANNELD_KUBE_SUBNET_MGR=true` flanneld takes its subnet from Kubernetes,
which we cannot do, so it is a one-line error rather than a misleading
"--subnet is required"."""

from __future__ import annotations

import difflib
from typing import Mapping

from udpoverlay.config.envflags import ENV_PREFIX, env_name, parse_bool
from udpoverlay.config.flags import FLAGS
from udpoverlay.errors import ConfigError

__all__ = ["FLANNELD_ONLY", "check_variables"]

# flanneld's flags udpoverlay does not have, and why.
FLANNELD_ONLY = {
    "--kube-subnet-mgr": "udpoverlay has no Kubernetes subnet manager: give --etcd-endpoints "
                         "(flannel's etcd layout) instead",
    "--kube-api-url": "no Kubernetes subnet manager", "--kubeconfig-file": "no Kubernetes "
    "subnet manager", "--kube-annotation-prefix": "no Kubernetes subnet manager",
    "--set-node-network-unavailable": "no Kubernetes subnet manager",
    "--use-multi-cluster-cidr": "no Kubernetes subnet manager",
    "--public-ipv6": "IPv4 only", "--net-config-path": "the network config comes from etcd",
    "--charon-executable-path": "no IPsec backend", "--charon-viciurl": "no IPsec backend",
}
OURS = {"FLANNELD_ENV_FILE"} | {env_name(n) for f in FLAGS for n in (f.name, *f.aliases)}


def check_variables(environ: Mapping[str, str], file_settings: Mapping[str, str],
                    path: str | None) -> list[str]:
    """WARNING lines for FLANNELD_* variables that are not a setting of ours
    (empty ones are ignored, as flanneld does); ConfigError for one that
    cannot be ignored."""
    notes = []
    named = [(k, v, "the environment") for k, v in environ.items()]
    named += [(k, v, path or "the env file") for k, v in file_settings.items()
              if k not in environ]
    for var, value, where in sorted(named):
        if not var.startswith(ENV_PREFIX) or var in OURS or not value.strip():
            continue
        flag = "--" + var[len(ENV_PREFIX):].lower().replace("_", "-")
        if flag == "--kube-subnet-mgr" and _true(value):
            raise ConfigError(f"{var}=true ({where}): {FLANNELD_ONLY[flag]}")
        if flag in FLANNELD_ONLY:
            notes.append(f"{var} ({where}) is flanneld's {flag}, which udpoverlay does not "
                         f"have ({FLANNELD_ONLY[flag]}): ignored")
            continue
        guess = difflib.get_close_matches(var, sorted(OURS), n=1, cutoff=0.8)
        hint = f" (did you mean {guess[0]}?)" if guess else ""
        notes.append(f"{var} ({where}) is not a udpoverlay setting{hint}: ignored")
    return notes


def _true(value: str) -> bool:
    try:
        return parse_bool(value)
    except Exception:  # noqa: BLE001 - not a boolean: not "true" either
        return False
