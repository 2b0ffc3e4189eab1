"""Send one large attachment to Postfix's smtp-sink with three clients and compare.

Each client runs in a fresh subprocess (so peak RSS is its own): smtplib with a stdlib
EmailMessage, aiosmtplib with the same EmailMessage, and postillon's Transporter with an
Email whose Attachment is a path (streamed). Wall time and peak RSS are the medians of
``--rounds`` runs; the table shows throughput and the ratios against smtplib.

Usage::

    python3 bench/bench_attachment.py                 # 100 MB, 3 rounds
    python3 bench/bench_attachment.py --size 1024     # the 1 GB run

This is a benchmark, not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SINK = "/usr/sbin/smtp-sink"
CLIENTS = ("smtplib", "aiosmtplib", "postillon")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"smtp-sink did not listen on port {port}")


def make_file(path: Path, size_mb: int) -> None:
    block = os.urandom(1024 * 1024)
    with open(path, "wb") as fh:
        for _ in range(size_mb):
            fh.write(block)


def peak_rss_mb() -> float:
    # VmHWM is the process's own peak resident set; ru_maxrss is the fallback (KiB)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _stdlib_message(path: str):  # type: ignore[no-untyped-def]
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = "bench@example.com"
    msg["To"] = "sink@example.org"
    msg["Subject"] = "attachment benchmark"
    msg.set_content("see attachment\n")
    with open(path, "rb") as fh:
        msg.add_attachment(
            fh.read(),
            maintype="application",
            subtype="octet-stream",
            filename=os.path.basename(path),
        )
    return msg


def child(client: str, port: int, path: str) -> None:
    start = time.perf_counter()
    ok = False
    if client == "smtplib":
        import smtplib

        with smtplib.SMTP("127.0.0.1", port) as smtp:
            smtp.send_message(_stdlib_message(path))
            ok = True
    elif client == "aiosmtplib":
        import asyncio

        import aiosmtplib

        asyncio.run(
            aiosmtplib.send(
                _stdlib_message(path),
                hostname="127.0.0.1",
                port=port,
                use_tls=False,
                start_tls=False,
            )
        )
        ok = True
    elif client == "postillon":
        from postillon import Security, Transporter
        from postillon.message import Attachment, Email

        mail = Email(
            from_="bench@example.com",
            to="sink@example.org",
            subject="attachment benchmark",
            text_body="see attachment\n",
            attachments=[Attachment(path)],
        )
        with Transporter("127.0.0.1", port, security=Security.NONE) as t:
            status = t.send(mail)
        ok = status.success
        if not ok:
            print(status.to_dict(), file=sys.stderr)
    else:
        raise SystemExit(f"unknown client {client}")
    wall = time.perf_counter() - start
    print(json.dumps({"client": client, "ok": ok, "wall": wall, "rss_mb": peak_rss_mb()}))


def run_child(client: str, port: int, path: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", client, "--port", str(port), "--file", str(path)],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if out.returncode != 0:
        return {"client": client, "ok": False, "error": out.stderr.strip()[-300:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100, help="attachment size in MB (1024: 1 GB)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.port, args.file)
        return 0
    if not (os.path.exists(SINK) and os.access(SINK, os.X_OK)):
        print(f"{SINK} not found: install Postfix", file=sys.stderr)
        return 2
    clients = [c for c in args.clients.split(",") if c]
    tmp = Path(tempfile.mkdtemp(prefix="postillon-bench-"))
    port = free_port()
    sink_cmd = [SINK, f"127.0.0.1:{port}", "1000"]
    if os.geteuid() == 0:
        sink_cmd[1:1] = ["-u", "nobody"]
    sink = subprocess.Popen(sink_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port)
        path = tmp / "attachment.bin"
        make_file(path, args.size)
        results: dict[str, list[dict[str, object]]] = {c: [] for c in clients}
        for round_no in range(args.rounds):
            for client in clients:
                r = run_child(client, port, path)
                results[client].append(r)
                state = "ok" if r.get("ok") else f"FAILED {r.get('error', '')}"
                print(
                    f"round {round_no + 1} {client:<11} {state} "
                    f"{r.get('wall', 0):.2f}s {r.get('rss_mb', 0):.0f} MB",
                    file=sys.stderr,
                )
    finally:
        sink.terminate()
        sink.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nattachment {args.size} MB, {args.rounds} rounds (medians), smtp-sink on loopback")
    print(
        f"{'client':<12}{'wall s':>9}{'MB/s':>9}{'peak RSS MB':>13}{'x faster':>10}{'x less RSS':>12}"
    )
    medians: dict[str, tuple[float, float]] = {}
    for client, runs in results.items():
        good = [r for r in runs if r.get("ok")]
        if not good:
            print(f"{client:<12}{'failed':>9}")
            continue
        wall = statistics.median(float(r["wall"]) for r in good)  # type: ignore[arg-type]
        rss = statistics.median(float(r["rss_mb"]) for r in good)  # type: ignore[arg-type]
        medians[client] = (wall, rss)
    base = medians.get("smtplib")
    for client, (wall, rss) in medians.items():
        speed = f"{base[0] / wall:.1f}" if base else "-"
        less = f"{base[1] / rss:.1f}" if base else "-"
        print(f"{client:<12}{wall:>9.2f}{args.size / wall:>9.0f}{rss:>13.0f}{speed:>10}{less:>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
