"""evax.bench: the reproduction harness of the EVA and infidelity papers' tables.

>>> from evax.bench import eva_table2
>>> df = eva_table2(n=8, out="bench-out")      # DataFrame; bench-out/eva-table2.{csv,json,png}
>>> from evax.bench import write_report
>>> write_report("bench-out")                  # bench-out/report.md, next to the papers' numbers

The tables are data (:mod:`evax.bench.registry`: frozen :mod:`evax.bench.specs`) run by one
runner (:func:`evax.bench.runner.run_table`); a changed spec is a new table:

>>> from evax.bench import run_table, table_spec
>>> spec = table_spec("eva-table1", quick=True).with_method("EVA", eps=0.25)
>>> df = run_table(spec, n=2, settings=["mnist"])

Command line: ``evax bench TABLE [--n N] [--out DIR] [--device] [--workers N] [--address ADDR]``.
Needs pandas (``pip install 'evax[bench]'``); Ray is optional (``--workers``).
"""

from evax.bench.registry import TABLES, table_spec
from evax.bench.report import write_report
from evax.bench.runner import RunOptions, run_table
from evax.bench.specs import MethodSpec, MetricSpec, SettingSpec, TableSpec
from evax.bench.tables import (
    certified_study,
    eva_table1,
    eva_table2,
    eva_table3,
    infidelity_table1,
    infidelity_table2,
    targeted,
)

__all__ = [
    "TABLES",
    "MethodSpec",
    "MetricSpec",
    "RunOptions",
    "SettingSpec",
    "TableSpec",
    "certified_study",
    "eva_table1",
    "eva_table2",
    "eva_table3",
    "infidelity_table1",
    "infidelity_table2",
    "run_table",
    "table_spec",
    "targeted",
    "write_report",
]
