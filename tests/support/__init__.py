"""Helpers shared by test modules: a test module imports from here, never from another
test module (the servers the suite starts are in tests/valkey.py and tests/postgres.py,
the load clients in tests/load.py, the fixtures in tests/conftest.py)."""
