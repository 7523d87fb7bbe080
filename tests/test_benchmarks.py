"""The benchmark script still runs (its figures are not judged here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_benchmarks_run_and_report_every_client(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--quick",
            "--peers",
            "sink,lock-step,3 ms,nagle",
            "--json",
            str(tmp_path / "results.json"),
            "--chart",
            str(tmp_path / "results.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    clients = {row["client"] for row in rows}
    assert "smtplib, reused connection (baseline)" in clients
    assert "mailman-mta Connection, pipelining" in clients
    assert "mailman-mta pool of 4, pipelining" in clients
    assert "smtplib x 4 threads" in clients
    assert {row["recipients"] for row in rows} == {1, 50}
    assert all(row["messages"] > 0 and row["per_second"] > 0 for row in rows)
    assert "| sink | 50 | mailman-mta Connection, pipelining |" in result.stdout
    assert "| goal (ratio to the baseline in this run) |" in result.stdout
    assert "| VERP, one post to 40 members, 3 ms away: 4 connections >= 3x one" in result.stdout
    assert "| lock-step | 1 | mailman-mta Connection, pipelining |" in result.stdout
    assert "mailman-mta Connection, pipelining, 1 rcpt, lock-step: msg/s >= 0.95x, side by side (" in result.stdout
    side_by_side = json.loads((tmp_path / "results.json").read_text())["lock_step_side_by_side"]
    assert side_by_side["messages"] > 0 and side_by_side["ratio"] > 0
    assert "| VERP, client CPU per copy <= 0.8x an smtplib loop rewriting the sender, sink" in result.stdout
    assert "| VERP on one connection, a relay with Nagle on: copies/s >= 1.0x an smtplib loop" in result.stdout
    assert json.loads((tmp_path / "results.json").read_text())["verp_nagle"]["ratio"] > 0


@pytest.mark.celery
def test_the_scale_out_benchmark_runs(redis_installed):
    """benchmarks/scaleout.py --quick still runs (one worker), and prints its table."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scaleout.py"), "--quick", "--workers", "1", "--relay", "sink"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| one process, Delivery (pool of 4) |" in result.stdout
    assert "| 1 Celery worker(s), each a pool of 4 |" in result.stdout
