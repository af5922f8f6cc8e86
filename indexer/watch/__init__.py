"""Training runs: registered folders (``discover`` finds complete, stable checkpoints in them) and the watch
cycle that indexes or links each new one (``cycle``). Imports: ``indexer.index``, ``indexer.model``, ``schema``."""
