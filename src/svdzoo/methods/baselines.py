"""The baselines every paper compares against: SVD, FWSVD, ASVD and SVD-LLM."""

from __future__ import annotations

from svdzoo.methods.base import FISHER, GRAM, SENS_ASVD, Method, register
from svdzoo.methods.parts import (
    ActivationScaled,
    FisherWeighted,
    PlainSVD,
    SensitivityThreshold,
    Uniform,
    Whitened,
    WhitenedOfficialFP32,
)

register(
    Method(
        name="svd",
        description="truncated SVD of each weight matrix, uniform ratio",
        paper="Golub & Reinsch 1970 (the data-free baseline)",
        needs=frozenset(),
        factoriser=PlainSVD(),
        allocator=Uniform(),
    )
)
register(
    Method(
        name="fwsvd",
        description="Fisher-weighted SVD: rows scaled by sqrt of summed squared gradients",
        paper="Hsu et al., ICLR 2022",
        needs=frozenset({FISHER}),
        factoriser=FisherWeighted(),
        allocator=Uniform(),
    )
)
register(
    Method(
        name="asvd",
        description="activation-aware SVD (mean|x|^0.5 scaling) with sensitivity-based ratio allocation",
        paper="Yuan et al., 2023",
        needs=frozenset({GRAM, SENS_ASVD}),
        factoriser=ActivationScaled(alpha=0.5),
        allocator=SensitivityThreshold(kind="asvd"),
    )
)
register(
    Method(
        name="asvd-uniform",
        description="activation-aware SVD at a uniform ratio (no sensitivity allocation)",
        paper="Yuan et al., 2023 (ablation)",
        needs=frozenset({GRAM}),
        factoriser=ActivationScaled(alpha=0.5),
        allocator=Uniform(),
    )
)
register(
    Method(
        name="svd-llm",
        description="truncation-aware Cholesky whitening, uniform ratio (no LoRA update)",
        paper="Wang et al., ICLR 2025",
        needs=frozenset({GRAM}),
        factoriser=Whitened(whitening="cholesky"),
        allocator=Uniform(),
    )
)
register(
    Method(
        name="svd-llm-fp32",
        description="SVD-LLM with the official code's float32 factorisation (float32 SVD of W L, float32-cast inv(L)); its Gram is svdzoo's float64 sum, not the official float32 one",
        paper="Wang et al., ICLR 2025 (official code's numerics)",
        needs=frozenset({GRAM}),
        factoriser=WhitenedOfficialFP32(),
        allocator=Uniform(),
    )
)
