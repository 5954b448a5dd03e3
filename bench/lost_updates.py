"""How many of 200 overlapping updates to one session each session layer keeps.

    python bench/lost_updates.py

Runs the load app of the test suite (tests/apps/loadapp.py) under gunicorn,
2 workers × 4 threads on 127.0.0.1, once per backend: 200 overlapping requests
of one session, each writing its own key, then counts the keys that survived.
A comparison for docs/reliability.md, not a pass/fail test (the suite's own
tests assert satchel loses nothing).
"""

from __future__ import annotations

import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.load import Gunicorn, read_session, request, start_session  # noqa: E402
from tests.valkey import ValkeyServer  # noqa: E402

UPDATES = 200


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="satchel-lost-"))
    valkey = ValkeyServer(tmp)
    valkey.start()
    backends = {
        "Flask cookie session": {"LOADAPP_BACKEND": "flask-cookie"},
        "Flask-Session 0.8, Redis": {
            "LOADAPP_BACKEND": "flask-session-redis",
            "LOADAPP_STORE": valkey.url,
        },
        "satchel, SQLite": {"LOADAPP_STORE": f"sqlite:///{tmp}/s.sqlite3"},
        "satchel, Valkey": {"LOADAPP_STORE": valkey.url},
    }
    print(f"{UPDATES} overlapping requests of one session, each writing its own key;")
    print("gunicorn 2 workers x 4 threads, 16 concurrent clients")
    print(f"{'backend':<28}{'kept':>8}{'lost':>8}")
    try:
        for name, env in backends.items():
            app = Gunicorn(env, workers=2, threads=4)
            app.start()
            try:
                cookie = start_session(app.port, "bench")

                def write(i: int, port: int = app.port, cookie: str = cookie) -> tuple:
                    status, new_cookie, _ = request(port, f"/write/k{i}", cookie)
                    assert status == 200
                    return time.monotonic(), new_cookie

                with ThreadPoolExecutor(16) as pool:
                    answers = sorted(pool.map(write, range(UPDATES)))
                # A browser keeps the cookie of the response that arrived last: for
                # a cookie session that cookie is the session.
                latest = [c for _, c in answers if c]
                data = read_session(app.port, latest[-1] if latest else cookie)
                kept = sum(1 for i in range(UPDATES) if f"k{i}" in data)
                print(f"{name:<28}{kept:>8}{UPDATES - kept:>8}")
            finally:
                app.stop()
    finally:
        valkey.kill()


if __name__ == "__main__":
    main()
