"""Checkpoint → canonical vectors → chunked projection → Arrow batches for the store."""

from indexer.run import IndexOptions, IndexResult, index_checkpoint

__all__ = ["IndexOptions", "IndexResult", "index_checkpoint"]
