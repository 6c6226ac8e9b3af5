"""Duo-SVD's column split (`column_preserving_split`): what `linalg` gives every method
(whiteners, the whitened SVD, truncation) plus the search over how many columns to keep
dense, the solvers of each candidate, and their numerical kernels.

- `split_search`: `column_preserving_split`, `ColumnSplit`, `column_counts`;
- `schedules`: how the search walks `delta_r`;
- `rest_problem`: one candidate's rest truncation (`_RestProblem`);
- `kernels`: float32 solves with error bounds, the chosen split's eigenpairs (`top_eigenpairs`:
  LAPACK's wanted pairs on a CPU, the certified `_top_eigh` elsewhere), triangular products.
"""

from svdzoo.column_split.schedules import SCHEDULES
from svdzoo.column_split.split_search import (
    SEARCHES,
    ColumnSplit,
    column_counts,
    column_preserving_split,
)

__all__ = ["SCHEDULES", "SEARCHES", "ColumnSplit", "column_counts", "column_preserving_split"]
