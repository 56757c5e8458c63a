"""Benchmarks for PiTe components (importable from tests with the repository root on ``sys.path``)."""
