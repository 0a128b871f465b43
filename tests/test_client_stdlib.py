"""`console.client` is what an agent's sandbox installs: it must import with the standard
library alone (SPEC §15, issue 14) — checked in an interpreter that cannot see any
installed package."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
try:
    import flask
except ImportError:
    pass
else:
    raise SystemExit("this interpreter can import flask: the probe proves nothing")
import console.client as client
assert hasattr(client, "ConsoleClient")
third_party = sorted(name for name in sys.modules
                     if name.split(".")[0] in ("flask", "sqlalchemy", "werkzeug", "pydantic", "jwt", "psycopg"))
assert not third_party, third_party
print("ok")
"""


def test_console_client_imports_with_the_standard_library_alone():
    # -I: isolated (no user site, no PYTHON* variables); -S: no site-packages at all.
    done = subprocess.run([sys.executable, "-I", "-S", "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr or done.stdout
