"""The engine parity suite (a package, so that its conftest does not replace the
``conftest`` module that tests/daemon/test_*.py import from)."""
