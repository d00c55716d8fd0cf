"""A Ray cluster of a test's own: its processes, ports, temp folder and home are the test's, it
is stopped by stopping what the test started (never ``ray stop``, which stops every Ray process
of the machine, a user's own cluster included), and its temp folder is removed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
PORT_FLAGS = (
    "--port",
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
)


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports nothing listens on now (bound together, so never the same one)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def ray_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a cluster and its drivers: a home of the test's own (Ray keeps its auth
    token in ~/.ray) and none of the caller's Ray settings but its temp folder, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") or k == "RAY_TMPDIR"}
    return env | {"HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"} | extra


@contextlib.contextmanager
def ray_cluster(env: dict[str, str], cpus: int = 2, timeout: float = 120) -> Iterator[str]:
    """A head node on 127.0.0.1 started with ``env``; yields its address."""
    temp = tempfile.mkdtemp(prefix="ray")  # short: Ray's socket paths must fit 107 bytes
    ports = free_ports(len(PORT_FLAGS))
    args = [a for flag, port in zip(PORT_FLAGS, ports, strict=True) for a in (flag, str(port))]
    cmd = [RAY, "start", "--head", "--block", "--num-cpus", str(cpus), "--temp-dir", temp]
    cmd += ["--node-ip-address", "127.0.0.1", "--include-dashboard", "false"]
    cmd += ["--disable-usage-stats", *args, "--min-worker-port", "0", "--max-worker-port", "0"]
    log = open(Path(temp) / "start.log", "w")  # noqa: SIM115 - closed below
    head = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"127.0.0.1:{ports[0]}"
    try:
        _wait_ready(head, Path(temp) / "start.log", timeout)
        yield address
    finally:
        _stop(head)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_ready(head: subprocess.Popen, log: Path, timeout: float) -> None:
    """Until ``ray start`` says the runtime started (its own readiness line)."""
    deadline = time.time() + timeout
    while "Ray runtime started" not in log.read_text():
        assert head.poll() is None, f"ray start failed: {log.read_text()[-2000:]}"
        assert time.time() < deadline, f"the cluster never came up: {log.read_text()[-2000:]}"
        time.sleep(0.2)


def _stop(head: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM to ``ray start --block`` (it stops the processes it started), then SIGKILL to
    whatever of its session is left."""
    with contextlib.suppress(ProcessLookupError):
        head.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        head.wait(grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(head.pid, signal.SIGKILL)
    head.wait()
