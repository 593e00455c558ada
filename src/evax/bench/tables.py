"""The papers' tables by function (the API before issue 17), over the specs and the runner.

Each function runs one registered table (:mod:`evax.bench.registry`) through
:func:`evax.bench.runner.run_table` and takes its keyword arguments (``n``, ``out``,
``settings``, ``workers``, ``address``, ``device``, ``seed``, ``threads``, ``quick``,
``offline``, ``progress``, ``methods``, ``metrics``; ``tiny_n`` for ``eva-table2``, ``method``
for ``targeted``). New code: ``run_table(name_or_spec, ...)``.
"""

from __future__ import annotations

from functools import wraps

from evax.bench import registry
from evax.bench.outputs import machine_info, nan_to_none
from evax.bench.protocols import eva_settings, metric_configs
from evax.bench.registry import BOUND_METHODS, INFD_SETTINGS, TABLES, table_spec
from evax.bench.runner import RunOptions, image_indices, run_cells, run_table

__all__ = [
    "BOUND_METHODS", "INFD_SETTINGS", "TABLES", "RunOptions", "certified_study", "eva_settings", "eva_table1",
    "eva_table2", "eva_table3", "image_indices", "infidelity_table1", "infidelity_table2", "machine_info",
    "metric_configs", "nan_to_none", "run_cells", "run_table", "table_spec", "targeted",
]


def _table_function(name: str):
    builder = registry.BUILDERS[name]

    @wraps(builder)
    def run(**kwargs):
        return run_table(name, **kwargs)

    run.__name__ = run.__qualname__ = name.replace("-", "_")
    run.__doc__ = (builder.__doc__ or "") + "\n\n    Runs with :func:`evax.bench.runner.run_table`'s arguments."
    return run


eva_table1 = _table_function("eva-table1")
eva_table2 = _table_function("eva-table2")
eva_table3 = _table_function("eva-table3")
infidelity_table1 = _table_function("infidelity-table1")
infidelity_table2 = _table_function("infidelity-table2")
targeted = _table_function("targeted")
certified_study = _table_function("certified-study")
