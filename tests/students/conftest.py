"""Fixtures for the student tests: tiny examples, regions, one built student (the demo
world: `demo_root` of tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from madcache.data.records import Example, Text


def vcr_example(i: int, image_id: str | None = None) -> Example:
    choices = ("a red square", "the blue circle on the left", "nothing at all", "person2 is")
    question = Text.from_string(f"What is person{i + 1} holding?")
    return Example(
        id=f"a-{i}:qa",
        dataset="vcr",
        split="train",
        image_id=image_id or f"img{i}",
        image_path=f"img{i}.jpg",
        choices=tuple(Text.from_string(c) for c in choices),
        label=i % 4,
        category="activity",
        context=question,
        label_free_text=question,
    )


def single_example(i: int, text: str = "Two persons stand near a green triangle.") -> Example:
    return Example(
        id=str(i),
        dataset="snli-ve",
        split="train",
        image_id=f"img{i}",
        image_path=f"img{i}.jpg",
        choices=(Text.from_string(text),),
        label=i % 3,
        category="x",
    )


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
    return type(
        "Make",
        (),
        {
            "vcr": staticmethod(vcr_example),
            "single": staticmethod(single_example),
            "regions": staticmethod(random_regions),
        },
    )


@pytest.fixture(scope="module")
def student():
    from madcache.students import build_student

    torch.manual_seed(0)
    return build_student("single-stream").eval()


# ----------------------------------------------------------------------------- uniter

UNITER_GOLDEN = __import__("pathlib").Path(__file__).parent / "golden" / "uniter_tiny.json"


def golden_value(key: str, shape, index: int, seed: int, scale: float) -> torch.Tensor:
    """The rule that made the golden checkpoints (tests/students/golden/README.md): tensor number
    `index` of the sorted keys is randn(shape) * scale from seed + index; LayerNorm weights
    (and the heads' LayerNorms, `.net.2.`, `_output.2.`) get 1 added."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed + index)) * scale
    last = key.rsplit(".", 1)[-1]
    norm = last == "gamma" or (
        last == "weight"
        and any(part in key for part in ("LayerNorm", "layer_norm", ".net.2.", "_output.2."))
    )
    return x + 1.0 if norm else x


def golden_checkpoint(case: dict, scale: float) -> dict[str, torch.Tensor]:
    """A golden case's state dict, in the released key layout it lists."""
    items = sorted(case["keys"].items())
    ties = case["ties"]
    state = {
        k: golden_value(k, s, i, case["seed"], scale)
        for i, (k, s) in enumerate(items)
        if k not in ties
    }
    return {**state, **{k: state[src].clone() for k, src in ties.items()}}


def write_bert_vocab(directory, size: int = 100):
    """A tiny cased WordPiece tokenizer: [PAD] [UNK] [CLS] [SEP] [MASK] (ids 0-4), then words."""
    from transformers import BertTokenizer

    words = [
        "the",
        "man",
        "is",
        "holding",
        "a",
        "red",
        "square",
        "what",
        "person",
        "?",
        ".",
        ",",
        "blue",
        "circle",
        "on",
        "left",
        "nothing",
        "at",
        "all",
        "##1",
        "##2",
        "##3",
        "objects",
        ":",
        "and",
        "why",
        "he",
        "she",
        "because",
    ]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    vocab += [f"w{i}" for i in range(size - len(vocab))]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=False).save_pretrained(
        str(directory)
    )
    return directory


@pytest.fixture(scope="session")
def uniter_golden():
    import json

    return json.loads(UNITER_GOLDEN.read_text())


@pytest.fixture(scope="session")
def uniter_files(tmp_path_factory, uniter_golden):
    """(tokenizer dir, {case: .pt path, "config_json": UNITER config}) for the golden cases,
    written with torch.save."""
    import json

    root = tmp_path_factory.mktemp("uniter")
    tokenizer = write_bert_vocab(root / "tokenizer", uniter_golden["config"]["vocab_size"])
    paths = {"config_json": root / "uniter-tiny.json"}
    paths["config_json"].write_text(json.dumps(uniter_golden["config"]))
    for name, case in uniter_golden["cases"].items():
        paths[name] = root / f"{name}.pt"
        torch.save(golden_checkpoint(case, uniter_golden["scale"]), paths[name])
    return tokenizer, paths
