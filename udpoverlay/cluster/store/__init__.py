"""Lease stores: the protocol (base.py), etcd (etcd.py), an in-memory fake.

gRPC's C core (under the etcd client) prints its own lines to stderr, in
its own format, outside our log (e.g. `E1206 ... GOAWAY ... too_many_pings`
when a server tells an idle connection off). It reads GRPC_VERBOSITY once,
when grpc is first imported, and offers no hook into Python logging; so it
is silenced here, before anything below can import grpc. What matters of
those events reaches our log anyway, as the errors our calls get. An
operator debugging gRPC can still set GRPC_VERBOSITY (and GRPC_TRACE)
explicitly: an explicit value is kept.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "NONE")
