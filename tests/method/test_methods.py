import numpy as np
import pytest

from madcache.cache.targets import Targets
from madcache.core.errors import MissingTargetError, UnknownNameError
from madcache.method.methods import (
    METHOD_ORDER,
    METHODS,
    Stage,
    check_targets,
    get_method,
    stage_weight,
)


def _targets(**fields):
    base = dict(example_ids=["a"], num_choices=1, image=None, text_eos=None, words=None)
    base.update(fields)
    return Targets(**base)


def _words(score):
    from madcache.cache.targets import WordTargets

    scores = np.full(2, score, np.float32)
    return WordTargets(
        offsets=np.array([0, 2]),
        feat=np.zeros((2, 3), np.float32),
        span=np.zeros((2, 2), np.int32),
        vr=scores,
        yake=np.zeros(2, np.float32),
        score=scores,
        truncated=np.zeros(2, bool),
    )


def test_registry_holds_the_methods_and_ablations():
    assert METHOD_ORDER == (
        "baseline",
        "md-vision",
        "md-text",
        "md",
        "md-ts",
        "md-ts-random",
        "md-ts-cw",
        "md-af",
        "mad-af-plain",
        "mad",
        "mad-no-cw",
        "mad-no-ts",
        "mad-random",
    )
    assert METHODS.names() == sorted(METHOD_ORDER)
    assert get_method("baseline").needs == ()
    assert get_method("md").needs == ("image", "text_eos")
    assert get_method("md-text").needs == ("text_eos",)
    assert get_method("mad").needs == ("image", "text_eos", "words", "logits")
    assert get_method("mad-no-cw").needs == ("image", "text_eos", "words")
    assert get_method("mad-random").selection == "random"


def test_af_belongs_to_the_methods_of_table_2_that_have_it():
    """The paper's baseline / MD / +TS / +CW rows have no AF stage; MAD and the AF ablations do."""
    with_af = {name for name in METHOD_ORDER if get_method(name).stage("af") is not None}
    assert with_af == {"md-af", "mad-af-plain", "mad", "mad-no-cw", "mad-no-ts", "mad-random"}
    mad = get_method("mad")
    assert mad.stage_names == ("af", "task")
    assert mad.stage("af") == Stage("af", ("dv", "dt"))  # L_AF: MLM + ITM + w MD
    assert mad.stage("task") == Stage("task", ("dv", "dt", "dwt"), "w_prime", confidence=True)
    assert get_method("mad-af-plain").stage("af").terms == ()  # AF w/o distillation
    assert get_method("md-ts-cw").stages == (mad.stage("task"),)  # MAD without AF
    assert mad.only("af").needs == ("image", "text_eos")  # AF loads no words
    assert get_method("mad-af-plain").only("af").needs == ()


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="Available: baseline, mad"):
        get_method("kd")


def test_stage_weights_w_for_md_and_w_prime_by_the_named_rule():
    md, mad, no_ts = (get_method(n).stage("task") for n in ("md", "mad", "mad-no-ts"))
    assert stage_weight(md, w=0.05, m=2) == 0.05
    assert stage_weight(mad, w=0.05, m=2) == pytest.approx(0.1)  # w (2 + m) / 2
    assert stage_weight(mad, w=0.05, m=3, w_prime_rule="per-feature") == pytest.approx(0.25)
    assert stage_weight(no_ts, w=0.05, m=2) == pytest.approx(0.05)  # m = 0 without TS
    assert stage_weight(no_ts, w=0.05, m=2, w_prime_rule="per-feature") == pytest.approx(0.1)
    assert stage_weight(mad, w=0.05, m=2, w_prime=0.3) == 0.3  # set: wins
    assert stage_weight(get_method("mad").stage("af"), w=0.05, m=2) == 0.05


def test_mad_on_a_cache_without_logits_names_the_target_and_the_cache():
    t = _targets(image=np.zeros((1, 2)), text_eos=np.zeros((1, 1, 2)), words=_words(0.5))
    with pytest.raises(MissingTargetError, match=r"teacher logits.*cache/demo/train"):
        check_targets(get_method("mad"), t, cache="cache/demo/train")
    check_targets(get_method("mad-no-cw"), t, cache="x")
    check_targets(get_method("baseline"), _targets(), cache="x")


def test_md_vision_needs_image_features():
    with pytest.raises(MissingTargetError, match=r"image features.*cache c"):
        check_targets(get_method("md-vision"), _targets(), cache="c")


def test_named_logits_must_exist():
    t = _targets(logits={"ia": np.zeros((1, 4))})
    with pytest.raises(MissingTargetError, match="'iqa'"):
        check_targets(
            get_method("mad-no-ts"),
            _targets(
                image=np.zeros((1, 2)),
                text_eos=np.zeros((1, 1, 2)),
                logits={"ia": np.zeros((1, 4))},
            ),
            cache="c",
            logits="iqa",
        )
    assert t.logits


def test_top_selection_needs_word_scores():
    words = _words(np.nan)
    t = _targets(image=np.zeros((1, 2)), text_eos=np.zeros((1, 1, 2)), words=words)
    with pytest.raises(MissingTargetError, match="word_score"):
        check_targets(get_method("mad-no-cw"), t, cache="c")
    check_targets(
        get_method("mad-random"),
        _targets(
            image=np.zeros((1, 2)),
            text_eos=np.zeros((1, 1, 2)),
            words=words,
            logits={"ia": np.zeros((1, 1))},
        ),
        cache="c",
    )
