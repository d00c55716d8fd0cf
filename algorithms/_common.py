"""Pieces shared by several algorithms (not registered: files starting with '_' are helpers)."""

from __future__ import annotations

import torch
from torch import Tensor


def clipped_pg(logp: Tensor, old_logp: Tensor, adv: Tensor, eps_low: float, eps_high: float):
    """PPO-clip surrogate per token, [B, T]; adv is [B, 1] or [B, T]. Returns (loss, clipped)."""
    ratio = torch.exp(logp - old_logp)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    return torch.maximum(pg1, pg2), clipped
