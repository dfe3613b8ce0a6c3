"""A real local Ray cluster for the Ray backend's tests: `ray start --head --block` on 127.0.0.1, with Ray's token
authentication on (RAY_AUTH_MODE=token, a token file of its own), started when a test asks for it and stopped by
ending that one process (it ends the cluster's processes with it).

The test process itself never becomes a Ray driver (a driver whose cluster goes away ends its own process): the
bot's RayPool talks to the cluster through its bridge process, and `kill_actor` asks Ray in a short process of
its own.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CPUS = 4
TESTS = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RayCluster:
    def __init__(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Short: Ray's socket paths live under it and a Unix socket path has at most 107 bytes.
        self.folder = Path(tempfile.mkdtemp(prefix="bsray"))
        token_file = self.folder / "auth_token"
        token_file.write_text(secrets.token_hex(32))
        # What the bot's process (and so its bridge) needs to join: the same mode and token.
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
        self.process: subprocess.Popen[bytes] | None = None

    def environment(self) -> dict[str, str]:
        # The actors import the tests' engine with faults (worker_faults), as local worker processes do.
        python_path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
        return {**os.environ, **self.auth, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": python_path}

    def start(self, timeout: float = 60.0) -> None:
        if self.process is not None:
            return
        ray = str(Path(sys.executable).with_name("ray"))
        self.process = subprocess.Popen(
            [ray, "start", "--head", "--block", f"--port={self.port}", "--node-ip-address=127.0.0.1",
             f"--num-cpus={CPUS}", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
             f"--temp-dir={self.folder / 'ray'}"],
            env=self.environment(), stdout=subprocess.DEVNULL, stderr=open(self.folder / "head.log", "wb"),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start ended: {(self.folder / 'head.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the Ray head did not listen within {timeout:g} s")

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        # `ray start --block` ends the cluster's processes when it is told to stop.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def crash(self) -> None:
        """Every process of the cluster killed at once, as when its machine goes down."""
        if self.process is None:
            return
        process, self.process = self.process, None
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def kill_actor(self, name: str, namespace: str = "bigsleep") -> None:
        """ray.kill the named actor (a worker: "ray-1", ...), from a driver of its own."""
        code = ("import ray, sys; ray.init(address=sys.argv[1], namespace=sys.argv[2], logging_level='ERROR', "
                "log_to_driver=False); ray.kill(ray.get_actor(sys.argv[3])); ray.shutdown()")
        subprocess.run([sys.executable, "-c", code, self.address, namespace, name], env=self.environment(),
                       check=True, capture_output=True, timeout=60)

    def ask_actor(self, name: str, method: str, *args: str, namespace: str = "bigsleep") -> str:
        """What the named actor's `method(*args)` returns (as text), asked from a driver of its own."""
        code = ("import ray, sys; ray.init(address=sys.argv[1], namespace=sys.argv[2], logging_level='ERROR', "
                "log_to_driver=False); actor = ray.get_actor(sys.argv[3]); "
                "print(ray.get(getattr(actor, sys.argv[4]).remote(*sys.argv[5:]))); ray.shutdown()")
        done = subprocess.run([sys.executable, "-c", code, self.address, namespace, name, method, *args],
                              env=self.environment(), check=True, capture_output=True, text=True, timeout=60)
        return done.stdout.strip().splitlines()[-1]
