"""Analyses that need a model's weights or its forward pass, each stored or reported on its own: traces
(logit lens, heads, neurons, decomposition), alignment of two models in embedding space, stitching and
fine-tuning diffs. Imports: ``indexer.model``, ``indexer.math``, ``schema`` and the builders of ``queries.sql``."""
