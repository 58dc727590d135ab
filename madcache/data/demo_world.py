"""The demo world generator (implementation in `madcache.data.demo`)."""

from madcache.data.demo import SIZES, generate_demo_world

__all__ = ["SIZES", "generate_demo_world"]
