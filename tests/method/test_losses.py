import numpy as np
import pytest
import torch

from madcache.method.losses import (
    Projections,
    confidence_weights,
    distillation_loss,
    feature_l1,
    projection_widths,
    text_term,
    vision_term,
    word_term,
)


def test_feature_l1_is_mean_absolute_error_over_last_dim():
    t = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    s = torch.tensor([[0.0, 4.0, 3.0], [1.0, -1.0, 4.0]])
    # (1 + 2 + 0) / 3 = 1;  (1 + 1 + 4) / 3 = 2
    assert torch.allclose(feature_l1(t, s), torch.tensor([1.0, 2.0]))


def test_confidence_weights_hand_computed():
    # teacher softmax max = 3/4 (logits ln 3, 0); student = 2/3 (0, ln 2): r = 1.125 > 1 -> w'
    # second row: teacher 1/2 vs student 2/3: r = 0.75 -> 0
    teacher = torch.tensor([[np.log(3.0), 0.0], [0.0, 0.0]])
    student = torch.tensor([[0.0, np.log(2.0)], [0.0, np.log(2.0)]])
    assert confidence_weights(teacher, student, 0.1).tolist() == pytest.approx([0.1, 0.0])


def test_confidence_weights_switch_exactly_at_one():
    student = torch.zeros(2, 4)  # max softmax 1/4
    teacher = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1e-3, 0.0, 0.0, 0.0]])
    # r == 1 -> 0; r slightly above 1 -> w'
    assert confidence_weights(teacher, student, 0.075).tolist() == [0.0, pytest.approx(0.075)]


def test_confidence_weights_carry_no_gradient():
    student = torch.tensor([[0.0, 0.0]], requires_grad=True)
    weights = confidence_weights(torch.tensor([[2.0, 0.0]]), student, 0.5)
    assert not weights.requires_grad
    loss = (weights * student.sum()).sum()
    loss.backward()
    assert student.grad.tolist() == [[0.5, 0.5]]  # only through the explicit student.sum()


def test_vision_and_text_terms_average_over_the_choices():
    teacher_image = torch.tensor([[1.0, 1.0]])
    student_image = torch.tensor([[[1.0, 1.0], [3.0, 1.0]]])  # l1: 0 and 1 -> 0.5
    assert vision_term(teacher_image, student_image).tolist() == [0.5]
    teacher_text = torch.tensor([[[0.0, 0.0], [2.0, 2.0]]])
    student_text = torch.tensor([[[1.0, 1.0], [2.0, 0.0]]])  # 1 and 1 -> 1
    assert text_term(teacher_text, student_text).tolist() == [1.0]


def test_word_term_is_mean_over_selected_words_only():
    teacher = torch.zeros(2, 2, 2, 1)
    student = torch.tensor([1.0, 3.0, 5.0, 100.0, 2.0, 2.0, 2.0, 2.0]).reshape(2, 2, 2, 1)
    mask = torch.tensor([[[True, True], [True, False]], [[False, False], [False, False]]])
    # instance 0: (1 + 3 + 5) / 3 = 3; instance 1 has no selected words -> 0
    assert word_term(teacher, student, mask).tolist() == [3.0, 0.0]


def test_md_and_unimodal_ablations():
    task = torch.tensor(0.5)
    vision, text = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0])
    # L_MD = 0.5 + 0.05 * mean([3, 3]) = 0.65
    assert distillation_loss(task, [vision, text], 0.05).item() == pytest.approx(0.65)
    assert distillation_loss(task, [vision], 0.05).item() == pytest.approx(0.5 + 0.05 * 2.0)
    assert distillation_loss(task, [text], 0.05).item() == pytest.approx(0.5 + 0.05 * 1.0)
    assert distillation_loss(task, [], 0.05).item() == 0.5  # baseline


def test_mad_with_cw_weights_and_with_constant_w_prime():
    task = torch.tensor(0.5)
    vision, text, words = (
        torch.tensor([1.0, 3.0]),
        torch.tensor([2.0, 0.0]),
        torch.tensor([1.0, 1.0]),
    )
    # per instance 4 and 4; CW keeps only the first: (0.075 * 4 + 0) / 2 = 0.15
    cw = torch.tensor([0.075, 0.0])
    assert distillation_loss(task, [vision, text, words], cw).item() == pytest.approx(0.65)
    # w' = 0.05 * (2 + 2) / 2 = 0.1 on both: 0.5 + 0.1 * 4 = 0.9
    assert distillation_loss(task, [vision, text, words], 0.1).item() == pytest.approx(0.9)


def test_af_adds_pretraining_losses_and_md():
    own = torch.tensor(1.0) + torch.tensor(0.25)  # MLM + ITM
    # 1.25 + 0.05 * mean([1 + 2, 3 + 0]) = 1.4
    total = distillation_loss(own, [torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0])], 0.05)
    assert total.item() == pytest.approx(1.4)


def test_projections_map_student_width_to_teacher_widths():
    proj = Projections(8, projection_widths(("dv", "dt", "dwt"), {"image": 4, "text": 6}))
    assert proj.vision(torch.zeros(1, 8)).shape == (1, 4)
    assert proj.word(torch.zeros(1, 8)).shape == (1, 6)
    assert Projections(8, projection_widths(("dt",), {"image": 4, "text": 6})).word is None


def test_cw_fires_on_a_cache_of_realistic_snli_ve_cosines(tmp_path):
    """CLIP ViT-B/16 image-hypothesis cosines of one SNLI-VE split lie within a few hundredths
    of each other (here entailment 0.28, neutral 0.26, contradiction 0.23, sd 0.03). With the
    k-means logits on CLIP's logit scale the teacher is confident (max softmax ~0.87) and CW
    fires for most instances against a student of max softmax ~0.6; on the raw cosine scale
    (format 1) the teacher's max softmax stayed ~0.34 and CW never fired (MAD became MD)."""
    from madcache.cache.reader import open_cache
    from madcache.cache.writer import CacheWriter
    from madcache.extraction.protocols import SnliVeProtocol

    rng = np.random.default_rng(0)
    sims = np.concatenate([rng.normal(mean, 0.03, 300) for mean in (0.28, 0.26, 0.23)])
    n = len(sims)
    arrays = {
        "example_id": np.array([f"p{i}" for i in range(n)], dtype=str),
        "image_id": np.array([f"i{i}" for i in range(n)], dtype=str),
        "image_feat": rng.normal(size=(n, 4)).astype(np.float16),
        "example_image": np.arange(n, dtype=np.int64),
        "similarity": sims.astype(np.float32),
    }
    manifest = {
        "fingerprint": {"dataset": {"name": "snli-ve", "split": "train"}},
        "dataset": "snli-ve",
        "split": "train",
        "num_choices": 1,
        "dims": {"image": 4, "text": 4},
        "settings": {},
        "num_shards": 1,
    }
    writer = CacheWriter.open(tmp_path / "c", manifest=manifest, format="hdf5")
    writer.write_shard(
        0, arrays, index_columns={"category": ["x"] * n, "label": [0] * n, "group": [""] * n}
    )
    writer.finish(extra=SnliVeProtocol().finish([{"similarity": sims.astype(np.float32)}]))
    cache = open_cache(tmp_path / "c")
    assert cache.manifest["extra"]["kmeans_scale"] == 100.0
    teacher = torch.from_numpy(cache.load_targets([f"p{i}" for i in range(n)]).logits["kmeans"])
    student = torch.from_numpy(rng.normal(0.0, 1.0, (n, 3)).astype(np.float32))
    fired = (confidence_weights(teacher, student, 0.1) > 0).float().mean().item()
    assert fired > 0.5
    assert teacher.softmax(-1).amax(-1).mean() > 0.8
    raw = (confidence_weights(teacher / 100.0, student, 0.1) > 0).float().mean().item()
    assert raw < 0.01
