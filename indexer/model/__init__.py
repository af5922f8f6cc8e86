"""Reading a checkpoint: its files and tensors, its vocabulary, the adapter that names its components, and
a forward pass with hooks. Plain I/O and module wiring; the math is in ``indexer.math``, the store is not
touched here. Imports: torch, safetensors, tokenizers, transformers (forward only), ``schema.errors``."""
