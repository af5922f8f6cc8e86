"""The outside of lensdb: the ``lensdb`` command line (``cli``) and ``lensdb serve`` (``app`` wires a
``StoreOwner`` — ``owner`` — to the JSON API in ``api`` and the HTML pages in ``site``, rendered by ``pages``,
``flow`` and ``heatmap``; ``guard`` checks tokens and body sizes; ``problems`` maps errors to RFC 9457
responses; ``jobs`` is the one write queue every write of the service waits in, and runs index jobs;
``settings`` declares every setting once).

May import: ``queries``, ``indexer``, ``schema``, FastAPI and uvicorn. The command line imports each
command's needs when it runs, so read commands stay on the read path (tests/test_layout.py).
"""
