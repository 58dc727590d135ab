"""Scoring what was trained: a run on a split (evaluate), submission files and their formats
(predict), the teacher alone from a cache (zeroshot), adapters on cached features (adapters),
examples behind a cache (cached). May import core, data, cache, students, method and train;
never teachers or extraction."""
