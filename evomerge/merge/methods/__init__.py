"""Built-in merge methods; importing this package registers them.

``gta``: every task-vector method (task arithmetic, TIES, DARE, breadcrumbs, DELLA) as one body and a
family; ``linear``, ``slerp``, ``model_stock``, ``nearswap``, ``sce``, ``karcher``: the others.
``params``: parameters they share.
"""

from evomerge.merge.methods import gta, karcher, linear, model_stock, nearswap, sce, slerp  # noqa: F401
