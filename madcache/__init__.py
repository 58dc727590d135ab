"""madcache: Multimodal Adaptive Distillation with a teacher-target cache.

Data flows one way: dataset -> teacher -> cache -> trainer -> report.
"""

import os

# Same command, same machine, same numbers (docs/guarantees.md): MKL and OpenMP may otherwise use
# fewer threads than asked for, and a thread count decides how reductions are split. Effective
# when madcache is imported before torch (the `madcache` command always is).
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
os.environ.setdefault("OMP_DYNAMIC", "FALSE")

__version__ = "0.1.0"
