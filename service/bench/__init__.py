"""Benchmarks shipped with the service (``hdr-service bench``).

The scripts in ``benchmarks/`` are thin wrappers around these.
"""
