"""Pure math: tensors in, tensors out. Projection bases and norm folding, chunked top-k projection, heads as
token maps, correlations across models, the Muppet decomposition. No I/O, no store; tested against dense
references. Imports: torch (scipy for the Hungarian matching), ``indexer.model.adapters.base`` data types."""
