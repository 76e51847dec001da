"""Experiment scripts, tables and benchmarks on the research package.

`research` is imported before anything else here: its host-memory setting (research.host_memory)
must precede the threads that PyTorch, TensorFlow or JAX start, or those threads keep malloc
arenas of their own.
"""

import research  # noqa: F401  pylint: disable=unused-import
