import numpy as np
import pytest
import torch

from madcache.data.records import Text
from madcache.extraction.scores import (
    combine_scores,
    content_words,
    visual_relevance,
    yake_word_scores,
)
from madcache.method.selection import top_words


def test_combine_scores_clips_negative_vr_and_normalises():
    vr = torch.tensor([-0.5, 0.2, 0.6, 0.0])
    si = torch.tensor([0.0, 0.5, 0.25, 0.25])
    # vr -> [0, .2, .6, 0] / .8 = [0, .25, .75, 0]; si / 1.0
    assert torch.allclose(combine_scores(vr, si), torch.tensor([0.0, 0.75, 1.0, 0.25]))


def test_combine_scores_all_zero_vector_stays_zero():
    vr = torch.tensor([-1.0, -2.0])
    si = torch.tensor([0.0, 0.0])
    assert torch.equal(combine_scores(vr, si), torch.zeros(2))


def test_visual_relevance_is_cosine():
    img = torch.tensor([1.0, 0.0])
    words = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 1.0]])
    assert torch.allclose(visual_relevance(img, words), torch.tensor([1.0, 0.0, -(2**-0.5)]))


def test_yake_scores_map_to_one_over_one_plus_score_and_take_max():
    text = Text.from_string("Why is person1 holding a telegram while sending it to the old man?")
    scores = yake_word_scores(text)
    words = [w.text for w in text.words]
    # yake 0.7.3 ranks "holding a telegram" first (score 0.0494...): its words get 1/(1+0.0494)
    assert scores[words.index("telegram")] == pytest.approx(1 / (1 + 0.04940384002065631), rel=1e-5)
    assert scores[words.index("holding")] == scores[words.index("telegram")]
    assert scores[words.index("a")] == 0.0  # a stopword inside the keyword: not passed on
    # "man" alone scored 0.1583...; "Why" is in no keyword
    assert scores[words.index("man")] == pytest.approx(1 / (1 + 0.15831692877998726), rel=1e-5)
    assert scores[words.index("Why")] == 0.0
    assert scores.dtype == np.float32 and scores.shape == (len(words),)


def test_selection_picks_the_content_words_of_a_known_sentence():
    text = Text.from_string("Why is person1 holding a telegram while sending it to the old man?")
    si = torch.from_numpy(yake_word_scores(text))
    vr = torch.zeros(len(text.words))
    vr[5] = 0.9  # the image is about the telegram
    chosen = top_words(combine_scores(vr, si), 2)
    assert [text.words[i].text for i in chosen] == ["telegram", "holding"]


def test_stopwords_and_punctuation_get_a_zero_selection_score():
    """YAKE passes a keyword's score to every word inside it ("dress is red"), and visual
    relevance scores any word: without the content mask "is" and "." could be selected."""
    text = Text.from_string("The dress is red , and she is sending a telegram ...")
    words = [w.text for w in text.words]
    content = content_words(text)
    assert [w for w, c in zip(words, content) if c] == ["dress", "red", "sending", "telegram"]
    si = torch.from_numpy(yake_word_scores(text))
    assert si[words.index("is")] == 0.0 and si[words.index("dress")] > 0
    vr = torch.full((len(words),), 0.1)
    vr[words.index("is")] = vr[words.index(",")] = 0.9  # relevance alone would pick them
    score = combine_scores(vr, si, torch.from_numpy(content))
    assert all(score[i] == 0 for i, c in enumerate(content) if not c)
    assert score[torch.from_numpy(content)].sum() == pytest.approx(2.0)  # both parts normalised
    assert {words[i] for i in top_words(score, 2)} <= {"dress", "red", "sending", "telegram"}


def test_content_words_are_memoised_per_text_and_equal_the_direct_rule():
    from madcache.extraction import scores

    text = Text.from_string("Why is person1 sending the telegram , and to whom ?")
    stopwords = scores._yake_extractor("en", 3, 20).stopword_set
    direct = [
        any(c.isalnum() for c in w.text) and w.text.lower() not in stopwords for w in text.words
    ]
    scores._content_words.cache_clear()
    first = content_words(text)
    first[:] = False  # a caller's copy, not the memo
    again = content_words(text)
    assert again.tolist() == direct and again.dtype == bool and any(direct)
    assert scores._content_words.cache_info().hits == 1
