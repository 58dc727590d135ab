"""Fixtures for the student tests: tiny examples, regions, one built student (the demo
world: `demo_root` of tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from madcache.data.records import Example, Text


def vcr_example(i: int, image_id: str | None = None) -> Example:
    choices = ("a red square", "the blue circle on the left", "nothing at all", "person2 is")
    question = Text.from_string(f"What is person{i + 1} holding?")
    return Example(id=f"a-{i}:qa", dataset="vcr", split="train", image_id=image_id or f"img{i}",
                   image_path=f"img{i}.jpg", choices=tuple(Text.from_string(c) for c in choices),
                   label=i % 4, category="activity", context=question, label_free_text=question)


def single_example(i: int, text: str = "Two persons stand near a green triangle.") -> Example:
    return Example(id=str(i), dataset="snli-ve", split="train", image_id=f"img{i}",
                   image_path=f"img{i}.jpg", choices=(Text.from_string(text),), label=i % 3,
                   category="x")


def random_regions(counts: tuple[int, ...], dim: int = 199, seed: int = 0):
    from madcache.students.regions import collate_regions

    generator = torch.Generator().manual_seed(seed)
    items = []
    for count in counts:
        corner = torch.rand(count, 2, generator=generator) * 0.5
        boxes = torch.cat([corner, corner + 0.5], dim=1)
        items.append((torch.randn(count, dim, generator=generator), boxes))
    return collate_regions(items)


@pytest.fixture
def make():
    """The helpers above, for test modules (conftest is not importable under importlib mode)."""
    return type("Make", (), {"vcr": staticmethod(vcr_example),
                             "single": staticmethod(single_example),
                             "regions": staticmethod(random_regions)})


@pytest.fixture(scope="module")
def student():
    from madcache.students import build_student

    torch.manual_seed(0)
    return build_student("single-stream").eval()

