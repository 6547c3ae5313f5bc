"""``flax.nnx.graphlib`` under its flax name: the graph API of ``bridge.graph`` and the
graph-rebuilding functions of ``bridge.graph_map`` in one namespace.

>>> import bridge as nnx
>>> from bridge import graphlib
>>> graphdef, state = graphlib.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
>>> sorted(graphlib.map(lambda path, v: v, graphlib.merge(graphdef, state)).kernel.shape)
[2, 3]
"""

from bridge.graph import *  # noqa: F403
from bridge.graph import Key, PathParts  # noqa: F401
from bridge.graph import __all__ as _graph_all
from bridge.graph import state as variables  # noqa: F401
from bridge.graph_map import map, recursive_map, set_metadata  # noqa: F401
from bridge.module import iter_children  # noqa: F401
from bridge.var_modes import vars_as, with_vars  # noqa: F401

__all__ = [*_graph_all, 'Key', 'PathParts', 'variables', 'map', 'recursive_map',
           'set_metadata', 'with_vars', 'vars_as', 'iter_children']
