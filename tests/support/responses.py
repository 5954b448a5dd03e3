"""What a clean answer to a store outage looks like."""

from __future__ import annotations

import pytest


def assert_clean_503(response: object, caplog: pytest.LogCaptureFixture) -> None:
    """A plain-text 503 naming the session store, no traceback shown or logged."""
    assert response.status_code == 503  # type: ignore[attr-defined]
    assert response.mimetype == "text/plain"  # type: ignore[attr-defined]
    assert b"session store" in response.data  # type: ignore[attr-defined]
    assert b"Traceback" not in response.data  # type: ignore[attr-defined]
    assert not any(r.exc_info for r in caplog.records), "no traceback is logged"
