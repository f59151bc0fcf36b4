"""Reporting, the floor above the runs: the comparison (`compare`, its `records` and `table`), the
paper's claims put to it (`claims`), and the figures of a run (`figures`, drawn with `viz`)."""
