"""The web never listens beyond loopback with auth off unless told to; Flower never without a login."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stack.cli import exposure_problem
from tests.conftest import ROOT


@pytest.mark.parametrize(("host", "auth", "allow", "refused"), [
    ("127.0.0.1", False, False, False), ("localhost", False, False, False), ("::1", False, False, False),
    ("0.0.0.0", False, False, True), ("192.168.1.20", False, False, True), ("myhost.lan", False, False, True),
    ("0.0.0.0", True, False, False), ("0.0.0.0", False, True, False),
])
def test_exposure_rule(host, auth, allow, refused):
    assert (exposure_problem(host, auth_enabled=auth, allow_open=allow) is not None) == refused


def _cli(*argv: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIXELMILL_")}
    return subprocess.run([sys.executable, "-m", "stack.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**clean, **env})


def test_web_refuses_an_open_address_with_auth_off_and_says_how_to_fix_it():
    answer = _cli("web", "--host", "0.0.0.0", "--port", "1")
    assert answer.returncode == 2
    assert "PIXELMILL_AUTH_ENABLED=1" in answer.stderr and "PIXELMILL_ALLOW_OPEN=1" in answer.stderr
    assert _cli("up", "--host", "0.0.0.0").returncode == 2


def test_flower_needs_a_login():
    answer = _cli("flower")
    assert answer.returncode == 2 and "PIXELMILL_FLOWER_AUTH=user:password" in answer.stderr
