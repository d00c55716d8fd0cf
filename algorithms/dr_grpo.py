"""Dr. GRPO: GRPO done right (Liu et al. 2025, "Understanding R1-Zero-Like Training").

The GRPO loss of algorithms/grpo.py with the two biases removed: no division by the group
std (A_i = R_i - mean R) and no per-sequence length normalisation (token losses are summed and
divided by the constant B * max_new_tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

from algorithms import Algorithm, Needs, grpo, register


@dataclass(frozen=True)
class Config(grpo.Config):
    beta: float = 0.0  # Liu et al. train without the KL term (rule-based rewards)
    scale_rewards: bool = False  # no std normalisation (removes the question-difficulty bias)
    loss_agg: grpo.LossAgg = "token-sum-norm"  # sum / (B * max_new_tokens): no length bias


register(
    Algorithm(
        name="dr_grpo",
        config=Config,
        loss=grpo.grpo_loss,
        needs=Needs(ref_logp=True),
        source="Liu et al. 2025 (arXiv 2503.20783): GRPO with scale_rewards=False, token-sum-norm",
    )
)
