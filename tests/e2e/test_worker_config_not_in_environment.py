"""Regression: the master gave its workers the whole configuration, queue password and
all, in an environment variable (readable in /proc/PID/environ, inherited by every child).

The workers now get the path of a file of the service's own (mode 0600) and read it.
The test server trusts loopback logins, so a password in the URL is accepted and unused.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from tests.support.process import DEFAULT_CONFIG, Mailgate
from tests.support.stores import PG_URL, pg_schema, with_params

SECRET = "w0rker-env-s3cret"


def test_worker_config_not_in_environment(tmp_path: Path) -> None:
    with pg_schema() as (schema, _):
        scheme, rest = PG_URL.split("://", 1)
        user_host = rest.split("/", 1)[0]
        user, _, host = user_host.rpartition("@")
        url = f"{scheme}://{user or 'postgres'}:{SECRET}@{host}/{rest.split('/', 1)[1]}"
        url = with_params(url, options=f"-csearch_path={schema}")
        mg = Mailgate(tmp_path, config=DEFAULT_CONFIG + f'\n[queue]\nurl = "{url}"\n')
        try:
            assert mg.cli("db", "upgrade").returncode == 0
            mg.start()
            status = json.loads(mg.cli("ctl", "status", "--json").stdout)
            pids = [p["pid"] for p in status["processes"] if p["name"] != "master"]
            assert pids, "the service runs worker processes"
            for pid in pids:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
                assert SECRET.encode() not in environ, f"worker {pid} has the password in its env"
            path = mg.data_dir / "worker-config.json"
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert mg.stop() == 0
        finally:
            mg.close()
