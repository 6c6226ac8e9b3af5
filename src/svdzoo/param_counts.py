"""Parameter counts of the dense, low-rank and column-preserving forms of one `m x n` linear.

Plain integer arithmetic, apart from `svdzoo.lowrank` (which defines the torch modules) so
that the allocators and the params check can count without importing torch. Biases are
never compressed: a count includes one only when `bias=True`, and then the same `m` on the
dense and the compressed side.
"""

from __future__ import annotations

__all__ = ["column_params", "dense_params", "lowrank_params", "worth_factoring"]


def dense_params(m: int, n: int, bias: bool = False) -> int:
    return m * n + (m if bias else 0)


def lowrank_params(m: int, n: int, k: int, bias: bool = False) -> int:
    return k * (m + n) + (m if bias else 0)


def column_params(m: int, n: int, k: int, c: int, bias: bool = False) -> int:
    """`c` dense columns (`m x c`) plus rank `k` on the other `n - c` inputs."""
    return c * m + k * (m + n - c) + (m if bias else 0)


def worth_factoring(m: int, n: int, k: int) -> bool:
    """False when the factored form is not smaller than the dense one: it then stays dense."""
    return k * (m + n) < m * n
