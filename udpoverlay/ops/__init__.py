"""Operations: what an operator's tools talk to, kept apart from the data
plane: the /healthz, /readyz and /metrics endpoint (http.py, metrics.py),
systemd's readiness notification (sdnotify.py), the log set-up (logs.py,
called by the CLI) and SIGHUP's re-reading of --env-file (reload.py), held
together by service.Ops. This face imports nothing: `ops.logs` alone does
not load the HTTP server or prometheus_client."""
