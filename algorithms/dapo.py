"""DAPO: Decoupled clip and Dynamic sAmpling Policy Optimization (Yu et al. 2025, arXiv
2503.14476).

The GRPO loss of algorithms/grpo.py with the paper's changes to the loss: clip-higher
(eps_low 0.2, eps_high 0.28), a token-level mean over every active token of the batch (long
answers weigh by their tokens, no per-sequence normalisation), and no KL term. Dynamic
sampling (drop groups whose rewards are all equal, draw more) is not a loss: it is the shared
rollout option ``sampling.dynamic``, which the DAPO preset entries turn on; the soft overlong
punishment is the reward option ``reward.overlong``. TRL: ``loss_type="dapo"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from algorithms import Algorithm, Needs, grpo, register


@dataclass(frozen=True)
class Config(grpo.Config):
    eps_high: float = 0.28  # clip-higher: the upper clip range (paper: 0.28)
    beta: float = 0.0  # no KL term (paper, Sec. 2.3)
    loss_agg: grpo.LossAgg = "token-mean"  # sum over the batch's active tokens / their count


register(
    Algorithm(
        name="dapo",
        config=Config,
        loss=grpo.grpo_loss,
        needs=Needs(ref_logp=True),  # KL to the reference is monitored (train/kl_ref), not trained
        source="Yu et al. 2025 (arXiv 2503.14476): eps_low=0.2, eps_high=0.28, token-mean, no KL",
    )
)
