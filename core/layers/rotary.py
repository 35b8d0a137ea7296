"""Rotate-half rotary position embedding, with InternLM's dynamic-NTK scaling as an option."""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """cos/sin per token from its position, computed once per forward and shared by every
    layer's ``rotary`` op. With ``scaling="dynamic"`` the base grows with the sequence's length
    past ``max_position_embeddings`` (InternLM / HF "dynamic" NTK):
    ``base' = base * (factor * L / max_pos - (factor - 1)) ** (D / (D - 2))``."""

    def __init__(
        self,
        head_dim: int,
        max_position_embeddings: int,
        base: float,
        scaling: str | None,
        scaling_factor: float,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_pos = max_position_embeddings
        self.base = base
        self.dynamic = scaling == "dynamic"
        self.factor = scaling_factor
        self.register_buffer("exponents", self._exponents(None), persistent=False)

    def _exponents(self, device: torch.device | None) -> torch.Tensor:
        d = self.head_dim
        return (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d).float()  # (D/2,)

    def reset_buffers(self, device: torch.device) -> None:
        """Recompute the (not stored) exponents, e.g. after building on the meta device."""
        self.exponents = self._exponents(device)

    def cos_sin(
        self, positions: torch.Tensor, seq_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # positions, seq_lens [T] -> cos, sin [T, D/2] fp32
        base = torch.full_like(positions, self.base, dtype=torch.float32)
        if self.dynamic:
            length = seq_lens.float().clamp(min=self.max_pos)
            scale = self.factor * length / self.max_pos - (self.factor - 1)
            base = base * scale.pow(self.head_dim / (self.head_dim - 2))
        inv_freq = base[:, None].pow(-self.exponents[None, :])  # (T, D/2)
        angles = positions.float()[:, None] * inv_freq
        return angles.cos(), angles.sin()
