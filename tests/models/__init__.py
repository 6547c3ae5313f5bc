"""Models written the way real projects write them, used by the ``test_real_models_*`` tests:
``linen_models`` (flax.linen) and ``nnx_models`` (NNX code that runs on ``bridge`` and on
``flax.nnx``)."""
