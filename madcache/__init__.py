"""madcache: Multimodal Adaptive Distillation with a teacher-target cache.

Data flows one way: dataset -> teacher -> cache -> trainer -> report.
"""

__version__ = "0.1.0"
