"""Start `vikhr serve` as a child process on loopback and stop it cleanly (tests, benchmarks, local judges)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

READY = re.compile(r"ready at (http://\S+:(\d+)/v1)")


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    base_url: str
    port: int
    lines: list[str] = field(default_factory=list)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGINT (as Ctrl-C would), wait for a clean exit; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(
    model: str | Path, *args: str, timeout: float = 120.0, env: dict | None = None
) -> ServerProcess:
    """`python -m vikhr serve MODEL --port 0 ARGS...`; waits for its "ready at URL" line on stderr."""
    cmd = [sys.executable, "-m", "vikhr", "serve", str(model), "--port", "0", *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    lines: list[str] = []
    found: dict = {}
    ready = threading.Event()

    def pump() -> None:  # keep reading stderr so the server never blocks on a full pipe
        for line in proc.stderr:
            lines.append(line)
            m = READY.search(line)
            if m and not found:
                found.update(url=m.group(1), port=int(m.group(2)))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("vikhr serve did not become ready:\n" + "".join(lines))
    if not found:
        proc.wait()
        raise RuntimeError(f"vikhr serve exited with {proc.returncode}:\n" + "".join(lines))
    return ServerProcess(proc, found["url"], found["port"], lines)
