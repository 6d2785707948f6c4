"""The README's first command on a fresh machine: `examhub demo` with no URLs configured starts an embedded
PostgreSQL and Redis, seeds the demo bank, serves, and a student can sit a test against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from storage.embedded import free_port


def test_demo_with_embedded_services_serves_a_whole_exam(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "EXAMHUB_SECRET")}
    env.update(EXAMHUB_DATA_DIR=str(tmp_path / "data"), EXAMHUB_PORT=str(port), PYTHONUNBUFFERED="1")
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen([sys.executable, "-m", "server.cli", "demo"], env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 90
        while "Take a test" not in log.read_text():
            assert demo.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        assert "starting an embedded PostgreSQL and Redis" in text
        assert "240 questions" in text and "biology-quick-10" in text
        assert f"In a browser: http://127.0.0.1:{port}/" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:  # the page it points to
            assert page.status == 200 and page.headers.get_content_type() == "text/html"
        sit = subprocess.run(
            [sys.executable, "-m", "server.cli", "sit", "--url", f"http://127.0.0.1:{port}", "--auto"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert sit.returncode == 0, sit.stdout + sit.stderr
        assert "Submitted (student): score" in sit.stdout
        assert "10 questions" in sit.stdout
        password = (tmp_path / "data" / "admin-password").read_text()
        assert f"log in as admin / {password}" in text
        login = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/auth/login",
            data=json.dumps({"username": "admin", "password": password}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(login, timeout=10) as r:
            assert json.load(r)["role"] == "admin"
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(30)
        except subprocess.TimeoutExpired:
            demo.kill()
    assert demo.returncode == 0, log.read_text()
    # the embedded Redis kept its append-only file in the data folder
    assert any((tmp_path / "data" / "redis").glob("appendonly*")), list((tmp_path / "data" / "redis").iterdir())


def test_serve_refuses_a_bad_number_of_workers() -> None:
    for bad in ("0", "-1", "65", "two"):
        done = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--workers", bad],
                              check=False, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 2, (bad, done.stdout, done.stderr)
        assert "--workers" in done.stderr and "serving" not in done.stdout, done.stderr
