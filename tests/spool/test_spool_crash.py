"""Crash tests: worker processes killed with SIGKILL while delivering to a real server.

After every kill the workers are restarted; at the end every submitted message must have
reached the server at least once, the spool must hold them all as SENT, and duplicates
may only come from kills: a worker pipelines a claimed batch (``--batch 4``) and records
the results together, so a kill duplicates at most the batch whose final dots were sent
before the results were recorded, per worker thread (security.md 3.3 K5-K8, I1, I2).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spool_helpers import make_prepared

from postillon.spool import Spool, SpoolState

N_MESSAGES = 1000
LEASE = "1.5"
BATCH = 4
_MID = re.compile(rb"^Message-ID:\s*(\S+)", re.I | re.M)


def worker_cmd(location: str, port: int, threads: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "postillon.spool", "run", "--spool", location, "--host",
        "127.0.0.1", "--port", str(port), "--security", "none", "--workers", str(threads),
        "--lease", LEASE, "--batch", str(BATCH), "--quiet", *extra,
    ]  # fmt: skip


def spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def received_ids(server: Any) -> Counter[str]:
    out: Counter[str] = Counter()
    for msg in server.messages:
        m = _MID.search(msg.content)
        assert m is not None
        out[m.group(1).decode()] += 1
    return out


def finish(location: str, port: int, schema: list[str], spool: Spool, timeout: float) -> None:
    """Restart workers (no more kills) until the queue is empty."""
    deadline = time.monotonic() + timeout
    while spool.counts()[SpoolState.PENDING]:
        assert time.monotonic() < deadline, f"not drained: {spool.counts()}"
        proc = spawn(worker_cmd(location, port, 2, "--until-empty", *schema))
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        time.sleep(0.2)  # leases of killed workers run out


def check(spool: Spool, submitted: set[str], server: Any, kills: int, threads: int) -> None:
    got = received_ids(server)
    assert submitted <= set(got), f"lost: {len(submitted - set(got))}"
    assert set(got) <= submitted
    dups = sum(n - 1 for n in got.values())
    print(f"kills={kills} dups={dups} received={sum(got.values())}")
    assert dups <= kills * threads * BATCH, (dups, kills)
    counts = spool.counts()
    assert counts == {SpoolState.PENDING: 0, SpoolState.SENT: N_MESSAGES, SpoolState.ERROR: 0}


def submit_all(spool: Spool) -> set[str]:
    ps = [make_prepared(f"crash test {i}\r\n".encode() * 20) for i in range(N_MESSAGES)]
    for i in range(0, N_MESSAGES, 250):
        spool.submit_many(ps[i : i + 250])
    return {p.message_id for p in ps}


def test_sqlite_sigkill_random_points(tmp_path: Path, smtpd_server: Callable[..., Any]) -> None:
    server = smtpd_server()
    location = str(tmp_path / "crash.db")
    rng = random.Random(int(os.environ.get("POSTILLON_CRASH_SEED", "20240601")))
    with Spool(location) as spool:
        submitted = submit_all(spool)
        kills = 0
        for _ in range(40):
            if spool.counts()[SpoolState.PENDING] == 0:
                break
            proc = spawn(worker_cmd(location, server.port, 2))
            # the start costs ~0.2 s, then ~1,000 messages/s: kill while delivering
            time.sleep(rng.uniform(0.2, 0.45))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
        delivered_before_final = len(received_ids(server))
        finish(location, server.port, [], spool, timeout=120)
        print("before final", delivered_before_final)
        assert kills >= 3 and delivered_before_final > 0
        check(spool, submitted, server, kills, threads=2)


def test_postgres_four_processes_sigkill(
    spool_pg_url: str, pg_schema: str, smtpd_server: Callable[..., Any]
) -> None:
    server = smtpd_server()
    rng = random.Random(int(os.environ.get("POSTILLON_CRASH_SEED", "20240602")))
    schema = ["--schema", pg_schema]
    with Spool(spool_pg_url, schema=pg_schema) as spool:
        submitted = submit_all(spool)
        procs = [spawn(worker_cmd(spool_pg_url, server.port, 1, *schema)) for _ in range(4)]
        kills = 0
        deadline = time.monotonic() + 90
        try:
            while spool.counts()[SpoolState.PENDING] and kills < 40:
                assert time.monotonic() < deadline
                time.sleep(rng.uniform(0.05, 0.3))
                victim = rng.randrange(4)
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait(10)
                kills += 1
                procs[victim] = spawn(worker_cmd(spool_pg_url, server.port, 1, *schema))
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)  # a clean stop: finish the message in hand
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:  # pragma: no cover - shown by the assert
                    p.kill()
                    raise
        finish(spool_pg_url, server.port, schema, spool, timeout=120)
        assert kills >= 3
        check(spool, submitted, server, kills, threads=1)
