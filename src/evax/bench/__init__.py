"""evax.bench: the reproduction harness of the EVA and infidelity papers' tables.

>>> from evax.bench import eva_table2
>>> df = eva_table2(n=8, out="bench-out")      # DataFrame; bench-out/eva-table2.{csv,json,png}
>>> from evax.bench import write_report
>>> write_report("bench-out")                  # bench-out/report.md, next to the papers' numbers

Command line: ``evax bench TABLE [--n N] [--out DIR] [--device] [--workers N] [--address ADDR]``.
Needs pandas (``pip install 'evax[bench]'``); Ray is optional (``--workers``).
"""

from evax.bench.report import write_report
from evax.bench.tables import (
    TABLES,
    eva_table1,
    eva_table2,
    eva_table3,
    infidelity_table1,
    infidelity_table2,
    run_table,
    targeted,
)

__all__ = [
    "TABLES",
    "eva_table1",
    "eva_table2",
    "eva_table3",
    "infidelity_table1",
    "infidelity_table2",
    "run_table",
    "targeted",
    "write_report",
]
