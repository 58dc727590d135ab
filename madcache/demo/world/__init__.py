"""The demo world: a seeded synthetic vision-language world written in the original VCR,
SNLI-VE and VQA v2 formats, plus a caption corpus (docs/demo-world.md)."""

from madcache.demo.world.generate import SIZES, generate_demo_world

__all__ = ["SIZES", "generate_demo_world"]
