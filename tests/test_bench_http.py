"""``make bench-http`` runs end to end (``--quick``: a few requests) and prints its lines.

No timing assertions: the figures depend on the machine; what is checked is that every
request was sent and answered 2xx, every run stored, and every report line printed."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow

LINES = (
    r"http submit p50 ms: [\d.]+",
    r"http submit p99 ms: [\d.]+",
    r"runtime submit per s: \d+",
    r"bare celery apply_async per s: \d+",
    r"ratio http submit cost/bare apply_async: [\d.]+",
)


def test_bench_http_quick_runs_end_to_end() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.http", "--quick", "--backends", "sqlite"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for line in LINES:
        assert re.search(line, out), f"missing {line!r} in:\n{out}"
    # --quick: 20 req/s for 2 s; nothing lost, nothing refused
    assert "requests sent: 40  completed (2xx): 40  non-2xx/errors: 0" in out, out
    assert "runs stored: 40" in out, out
