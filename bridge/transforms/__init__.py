"""NNX-style transforms: JAX transforms over functions of Modules."""
