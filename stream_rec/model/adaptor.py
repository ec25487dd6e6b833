"""A mixture-of-experts adaptor from the frozen text encoder's vectors to the item space.

After UniSRec (Hou et al., KDD 2022, "Towards Universal Sequence Representation Learning for Recommender
Systems"), section 3.1: each expert is a *parametric whitening* -- a learned shift of the frozen vector,
then a linear map -- and a softmax gate over the text vector mixes the experts. A single linear map
(``text_experts = 0``, what the model had before) can only rotate and scale the encoder's space; the
shifts and the text-dependent mixture let the recommendation loss re-shape it where the encoder's notion
of similarity is not the users' (MovieLens titles: "similar words" is rarely "watched next").

    adaptor(x) = sum_e softmax(G x)_e * W_e (x - b_e)

Used in place of the text projection (``HybridGRU.text_proj``); cost: ``experts`` times the projection's
multiply-adds per item table refresh (once per training step, once per catalogue change when serving).
"""

from __future__ import annotations

import torch
from torch import nn


class MoEAdaptor(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, experts: int, dropout: float = 0.0):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(experts, in_dim))
        self.weight = nn.Parameter(torch.randn(experts, in_dim, out_dim) * 0.02)
        self.gate = nn.Linear(in_dim, experts, bias=False)
        nn.init.zeros_(self.gate.weight)  # an even mixture to start
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, in_dim] -> [N, out_dim]"""
        gates = torch.softmax(self.gate(x), dim=-1)  # [N, E]
        experts = torch.einsum("ned,edk->nek", self.dropout(x).unsqueeze(1) - self.shift, self.weight)  # [N, E, out]
        return (gates.unsqueeze(-1) * experts).sum(1)
