"""edge_agent/lean.py: a module paho imports but an agent never uses is loaded only once
something reads from it, and then works as usual (each case in a fresh interpreter, since
it changes sys.modules)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PRELUDE = """
import sys
from edgeplane.edge_agent.lean import Deferred, defer_unused_imports
defer_unused_imports()
import paho.mqtt.client as mqtt
"""

CASES = {
    "paho-imports-a-stand-in": """
assert isinstance(sys.modules["urllib.request"], Deferred)
assert "http.client" not in sys.modules
print("ok")
""",
    "from-import-loads-the-real-module": """
from urllib.request import Request, getproxies
assert callable(getproxies) and Request.__module__ == "urllib.request"
assert not isinstance(sys.modules["urllib.request"], Deferred)
import urllib.request
assert urllib.request is sys.modules["urllib.request"]
print("ok")
""",
    "paho-sees-the-real-names": """
assert callable(mqtt.urllib.request.getproxies)
assert mqtt.urllib.request.getproxies is sys.modules["urllib.request"].getproxies
print("ok")
""",
    "a-module-already-imported-is-left-alone": """
from urllib.request import getproxies  # the real module, from now on
real = sys.modules["urllib.request"]
defer_unused_imports()
assert sys.modules["urllib.request"] is real and not isinstance(real, Deferred)
print("ok")
""",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_deferred_stdlib_modules(case: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + CASES[case]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.strip() == "ok", result.stderr
