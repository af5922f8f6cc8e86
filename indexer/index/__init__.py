"""One index run, in steps that each own one concern: ``options`` (what is asked), ``plan`` (units and
bases), ``projector`` (compute), ``executors`` (local or Ray, one interface), ``unit_writer`` (rows into the
run's transaction), ``head_maps`` (the --head-maps phase), ``catalog_writes`` (vocabulary, model, checkpoint
and attempt rows), ``run`` (the orchestration). Imports: ``indexer.model``, ``indexer.math``, ``schema``."""
