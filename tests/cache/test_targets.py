import numpy as np

from madcache.cache.targets import kmeans_logits


def test_kmeans_logits_are_negative_distances_on_the_logit_scale():
    logits = kmeans_logits(np.array([0.29, 0.12]), np.array([0.30, 0.20, 0.11]), 100.0)
    np.testing.assert_allclose(logits, [[-1.0, -9.0, -18.0], [-18.0, -8.0, -1.0]], atol=1e-4)
    assert logits.argmax(1).tolist() == [0, 2]  # entailment, contradiction
