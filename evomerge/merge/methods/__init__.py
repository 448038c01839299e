"""Built-in merge methods; importing this package registers them.

``gta``: every task-vector method (task arithmetic, TIES, DARE, breadcrumbs, DELLA) as one body and a
family; ``linear``, ``slerp``, ``nuslerp``, ``multislerp``, ``model_stock``, ``nearswap``, ``sce``,
``karcher``: the others. ``params``: parameters they share.
"""

from evomerge.merge.methods import gta, karcher, linear, model_stock, multislerp, nearswap, nuslerp, sce, slerp  # noqa: F401
