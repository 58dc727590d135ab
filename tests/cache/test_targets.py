import numpy as np

from madcache.cache.targets import kmeans_logits


def test_kmeans_logits_are_negative_distances():
    logits = kmeans_logits(np.array([0.29, 0.12]), np.array([0.30, 0.20, 0.11]))
    np.testing.assert_allclose(logits, [[-0.01, -0.09, -0.18], [-0.18, -0.08, -0.01]], atol=1e-6)
    assert logits.argmax(1).tolist() == [0, 2]  # entailment, contradiction
