"""``trio-jobs dashboard`` and ``trio-jobs worker --metrics-port``, as subprocesses."""

from __future__ import annotations

import re
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker_apps import cli_command, cli_env

pytestmark = pytest.mark.slow

DEADLINE = 60.0


def _wait_for_line(stream: IO[str], pattern: str) -> re.Match[str]:
    """Read ``stream`` until a line matches ``pattern`` (or fail after DEADLINE seconds)."""
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    deadline = time.monotonic() + DEADLINE
    seen = []
    while time.monotonic() < deadline:
        if not selector.select(timeout=deadline - time.monotonic()):
            break
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r} in {''.join(seen)!r}")


@contextmanager
def _running(args: list[str], cwd: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        cli_command(*args),
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(DEADLINE)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _submit(db: Path, *args: str) -> None:
    # `submit` refuses a missing store (a typo in --db must not make a new one).
    if not db.exists():
        subprocess.run(cli_command("--db", str(db), "migrate"), env=cli_env(), check=True)
    subprocess.run(cli_command("--db", str(db), "submit", *args), env=cli_env(), check=True)


def test_dashboard_command_serves_the_store_until_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    _submit(db, "email", '{"to": "ada@example.com"}')
    args = ["dashboard", "--db", str(db), "--port", "0", "--read-only"]
    with _running(args, tmp_path) as proc:
        assert proc.stdout is not None
        url = _wait_for_line(proc.stdout, r"(http://127\.0\.0\.1:\d+/)").group(1)
        page = httpx.get(url, timeout=DEADLINE)
        assert page.status_code == 200
        assert 'id="count-pending">1<' in page.text
        assert "read-only" in page.text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(DEADLINE) == 0


def test_dashboard_command_refuses_a_missing_database(tmp_path: Path) -> None:
    result = subprocess.run(
        cli_command("dashboard", "--db", str(tmp_path / "typo.db")),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode != 0
    assert "no database" in result.stderr
    assert not (tmp_path / "typo.db").exists()


def test_worker_serves_its_metrics(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    _submit(db, "echo", '"hello"')
    args = ["worker", "worker_apps:HANDLERS", "--db", str(db), "--metrics-port", "0"]
    with _running(args, tmp_path) as proc:
        assert proc.stderr is not None
        url = _wait_for_line(proc.stderr, r"metrics on (http://\S+/metrics)").group(1)
        deadline = time.monotonic() + DEADLINE
        completed = stored = 0.0
        # The counter counts the attempt's event; the gauge reads the store, where
        # the outcome lands a moment later: wait for both.
        while (completed, stored) != (1, 1) and time.monotonic() < deadline:
            text = httpx.get(url, timeout=DEADLINE).text
            samples = {
                (s.name, s.labels.get("job_type"), s.labels.get("status")): s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
            }
            completed = samples.get(("trio_jobs_completed_total", "echo", None), 0.0)
            stored = samples.get(("trio_jobs_jobs", "echo", "completed"), 0.0)
            if (completed, stored) != (1, 1):
                time.sleep(0.05)
        assert (completed, stored) == (1.0, 1.0)
        assert samples[("trio_jobs_workers", None, None)] == 1.0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(DEADLINE) == 0
