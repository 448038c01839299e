"""Built-in merge methods; importing this package registers them.

``gta``: every task-vector method (task arithmetic, TIES, DARE, breadcrumbs, DELLA) as one body and a
family; ``tsvm`` and ``pcb``: task-vector methods of the literature with bodies of their own (no
mergekit equivalent); ``regmean``: per linear layer from the sources' input Gram matrices; ``fisher``: entry by
entry from the sources' diagonal Fisher;
``linear``, ``slerp``, ``nuslerp``, ``multislerp``, ``model_stock``, ``nearswap``,
``sce``, ``karcher``, ``passthrough`` (one model; layer stacking in ``recipes.stack``): the others.
``params``: parameters they share.
"""

from evomerge.merge.methods import (  # noqa: F401
    fisher,
    gta,
    karcher,
    linear,
    model_stock,
    multislerp,
    nearswap,
    nuslerp,
    passthrough,
    pcb,
    regmean,
    sce,
    slerp,
    tsvm,
)
