"""Token selection at load time: top-m / random words per text (madcache.method.selection)."""

import numpy as np
import torch

from madcache.cache.targets import WordTargets
from madcache.data.records import Text
from madcache.extraction.scores import combine_scores
from madcache.method.selection import random_words, select_words, top_words


def _words(scores_per_text, truncated_per_text=None, dim=2):
    offsets = np.cumsum([0] + [len(s) for s in scores_per_text]).astype(np.int64)
    score = np.concatenate([np.asarray(s, dtype=np.float32) for s in scores_per_text])
    n = len(score)
    truncated = (
        np.zeros(n, dtype=bool)
        if truncated_per_text is None
        else np.concatenate(truncated_per_text)
    )
    return WordTargets(
        offsets=offsets,
        feat=np.arange(n * dim, dtype=np.float32).reshape(n, dim),
        span=np.stack([np.arange(n), np.arange(n) + 1], axis=1).astype(np.int32),
        vr=np.zeros(n, np.float32),
        yake=np.zeros(n, np.float32),
        score=score,
        truncated=truncated,
    )


def test_top_words_ties_go_to_lower_index_and_short_texts_return_all():
    assert top_words(torch.tensor([0.1, 0.5, 0.5, 0.2]), 2).tolist() == [1, 2]
    assert top_words(torch.tensor([0.3, 0.9]), 3).tolist() == [1, 0]
    assert top_words(torch.tensor([]), 2).tolist() == []


def test_random_words_is_seeded_and_distinct():
    a = random_words(10, 3, torch.Generator().manual_seed(1))
    b = random_words(10, 3, torch.Generator().manual_seed(1))
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 3


def test_select_words_top_m_skips_truncated_and_pads_short_texts():
    words = _words(
        [[0.1, 0.5, 0.5, 0.2], [0.3]], [np.array([False, True, False, False]), np.array([False])]
    )
    sel = select_words(words, num_examples=1, num_choices=2, m=2)
    # text 0: word 1 truncated -> usable scores [0.1, 0.5, 0.2] -> words 2, 3
    assert sel.feat.shape == (1, 2, 2, 2)
    assert sel.span[0, 0].tolist() == [[2, 3], [3, 4]]
    assert sel.feat[0, 0].tolist() == [[4.0, 5.0], [6.0, 7.0]]
    assert sel.mask.tolist() == [[[True, True], [True, False]]]
    assert sel.span[0, 1, 0].tolist() == [4, 5]


def test_select_words_on_a_known_sentence_picks_the_expected_words():
    text = Text.from_string("the man holds a red umbrella")
    vr = torch.tensor([0.0, 0.6, 0.1, -0.2, 0.1, 0.2])
    yake = torch.tensor([0.0, 0.4, 0.0, 0.0, 0.2, 0.4])
    # vr/|vr| = [0, .6, .1, 0, .1, .2]; yake/|yake| = [0, .4, 0, 0, .2, .4] -> man 1.0, umbrella .6
    score = combine_scores(vr, yake).numpy()
    words = _words([score])
    sel = select_words(words, num_examples=1, num_choices=1, m=2)
    picked = [
        text.text[a:b]
        for a, b in ((text.words[i].start, text.words[i].end) for i in sel.span[0, 0, :, 0])
    ]
    assert picked == ["man", "umbrella"]


def test_random_selection_is_seeded_and_uses_only_usable_words():
    words = _words([[0.9, 0.1, 0.2, 0.3, 0.4]])
    a = select_words(
        words, num_examples=1, num_choices=1, m=2, generator=torch.Generator().manual_seed(3)
    )
    b = select_words(
        words, num_examples=1, num_choices=1, m=2, generator=torch.Generator().manual_seed(3)
    )
    assert np.array_equal(a.span, b.span) and a.mask.all()
    assert len(set(a.span[0, 0, :, 0].tolist())) == 2


def test_top_selection_never_picks_a_zero_score_word():
    """Stopwords and punctuation score 0 at extraction: a text with one content word gives one
    selected word, not a stopword as the second."""
    words = _words([[0.0, 0.7, 0.0, np.nan], [0.0, 0.0]])
    sel = select_words(words, num_examples=1, num_choices=2, m=2)
    assert sel.mask.tolist() == [[[True, False], [False, False]]]
    assert sel.span[0, 0, 0].tolist() == [1, 2]
    random = select_words(
        words, num_examples=1, num_choices=2, m=2, generator=torch.Generator().manual_seed(0)
    )
    assert random.mask.all()  # the ablation control draws from every word
