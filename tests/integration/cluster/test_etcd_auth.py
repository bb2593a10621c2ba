"""--etcd-username/--etcd-password against a real etcd with authentication
on: the right credentials read and write, a wrong password or none is a
clear error (not retried forever: retryable=False for bad credentials)."""

from __future__ import annotations

import pytest

from tests.support.asyncutil import run
from udpoverlay.cluster.store.etcd import EtcdStore
from udpoverlay.errors import ConfigError, LeaseStoreError


def _enable_auth(server) -> None:
    server.etcdctl("user", "add", "root", "--new-user-password=rootpw")
    server.etcdctl("user", "add", "flannel", "--new-user-password=fpw")
    server.etcdctl("role", "add", "flannel")
    server.etcdctl("role", "grant-permission", "flannel", "--prefix=true", "readwrite",
                   "/coreos.com/network/")
    server.etcdctl("user", "grant-role", "flannel", "flannel")
    server.etcdctl("auth", "enable")


def test_credentials_read_and_write_wrong_ones_fail(etcd_server):
    _enable_auth(etcd_server)
    key = "/coreos.com/network/subnets/198.19.4.0-24"

    async def main():
        good = EtcdStore([etcd_server.endpoint], username="flannel", password="fpw")
        bad = EtcdStore([etcd_server.endpoint], username="flannel", password="nope")
        anon = EtcdStore([etcd_server.endpoint], timeout=3.0)
        try:
            assert await good.create(key, b'{"PublicIP":"198.18.0.4"}', 60) is not None
            got = await good.get(key)
            assert got is not None and got.value == b'{"PublicIP":"198.18.0.4"}'
            with pytest.raises(LeaseStoreError) as ei:
                await bad.get(key)
            assert ei.value.retryable is False and "\n" not in str(ei.value)
            with pytest.raises(LeaseStoreError):
                await anon.get(key)
        finally:
            for s in (good, bad, anon):
                await s.close()
    run(main(), timeout=60)


def test_username_without_password_is_a_config_error():
    with pytest.raises(ConfigError, match="username and a password"):
        EtcdStore(["http://127.0.0.1:2379"], username="flannel")
