"""The project's benchmarks: every one lives here, none ships in the service's wheel.

Run them from the repository root as modules (``python -m benchmarks.engines ...``), so
that they import each other as ``benchmarks.<name>``. A measurement that needs its own
process (its own peak memory, its own allocator state) runs through
:func:`benchmarks.child.run_in_child`, the one child-process harness.
"""
