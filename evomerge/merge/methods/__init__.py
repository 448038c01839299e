"""Built-in merge methods; importing this package registers them (one module per method family)."""

from evomerge.merge.methods import (  # noqa: F401
    breadcrumbs,
    dare,
    della,
    linear,
    model_stock,
    slerp,
    task_arithmetic,
    ties,
)
