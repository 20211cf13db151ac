"""Contrastive representation distillation (Tian et al., ICLR 2020); reference: HobbitLong/RepDistiller
(crd/memory.py, crd/criterion.py).

Each model's pooled feature (by default the last stage's, average-pooled to a vector, as the references'
penultimate feature) is embedded to `feat_dim` dimensions and L2-normalised. A memory bank keeps one
embedding per training sample for each model, found by the sample's position in the training split
(TermInputs.index) and updated with momentum. For each sample, its own memory entry is the positive and
`nce_k` uniformly drawn entries are negatives (with replacement, so the positive may be drawn again, as the
reference's AliasMethod over uniform weights). The student's embedding is scored against the teacher's
memory and the teacher's embedding against the student's: exp(<w, v> / nce_t) / Z, with Z fixed from the
first batch (mean score times the training set size); each side's NCE loss is
-(sum_i log(P_i+ / (P_i+ + K/N)) + sum_ij log((K/N) / (P_ij- + K/N))) / B, the two sides summed.

RepDistiller's row: -r 1 -a 0 -b 0.8, feat_dim 128, nce_k 16384, nce_t 0.07, nce_m 0.5. Differences on
purpose: `nce_k` is capped at the training set's size (digits has far fewer than 16384 samples); the scores
are computed in float32 even under mixed precision (exp(1/0.07) overflows float16). Several processes are
refused: each would update only its own shard's rows (the banks are not synchronised).
The bank lives in the term (buffers): last.pt keeps it for resume; the student never carries it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdrun.distributed import current_world
from kdrun.errors import ConfigError
from kdrun.keys import key
from kdrun.methods.terms.base import TermInputs, register_term
from kdrun.methods.terms.feature.picks import OneStageKeys, OneStageTerm, embedding, pick_one
from kdrun.methods.terms.feature.stages import FeatureContext, Shape

EPS = 1e-7  # the reference's, inside the NCE ratios


def nce_loss(scores: Tensor, n_data: int) -> Tensor:
    """scores: (B, 1 + K) normalised scores, the positive first. The NCE loss of RepDistiller's ContrastLoss."""
    k = scores.shape[1] - 1
    noise = k / n_data
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + EPS))
    negative = torch.log(noise / (scores[:, 1:] + noise + EPS))
    return -(positive.sum() + negative.sum()) / scores.shape[0]


def crd_loss(v_s: Tensor, v_t: Tensor, memory_s: Tensor, memory_t: Tensor, idx: Tensor, z: Tensor, T: float,
             n_data: int) -> Tensor:
    """The two NCE losses: the student's embeddings v_s against the teacher's memory rows idx (B, 1 + K), and
    the teacher's v_t against the student's memory; z holds each side's normaliser."""
    s_scores = torch.exp(torch.bmm(memory_t[idx], v_s.unsqueeze(2)).squeeze(2) / T) / z[0]
    t_scores = torch.exp(torch.bmm(memory_s[idx], v_t.unsqueeze(2)).squeeze(2) / T) / z[1]
    return nce_loss(s_scores, n_data) + nce_loss(t_scores, n_data)


class Embed(nn.Sequential):
    """A linear map to feat_dim, then L2 normalisation (the reference's Embed)."""

    def __init__(self, dim: int, feat_dim: int):
        super().__init__(nn.Linear(dim, feat_dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(super().forward(embedding(x)), dim=1)


@register_term
class CRD(OneStageTerm):
    name = "crd"

    @dataclass
    class Config(OneStageKeys):
        weight: float = key(default=0.8, low=0)
        feat_dim: int = key(default=128, low=1, doc="the embedding's dimension")
        nce_k: int = key(default=16384, low=1, doc="negatives per sample (capped at the training set's size)")
        nce_t: float = key(default=0.07, low=1e-6, doc="the temperature of the scores")
        nce_m: float = key(default=0.5, low=0, doc="the memory bank's momentum, at most 1")

    def __init__(self, config, refs, shapes: tuple[Shape, Shape], n_data: int):
        super().__init__(config, refs)
        self.n_data = n_data
        self.k = min(int(config.nce_k), n_data)
        self.embed_s = Embed(shapes[0][0], config.feat_dim)
        self.embed_t = Embed(shapes[1][0], config.feat_dim)
        stdv = 1.0 / math.sqrt(config.feat_dim / 3)  # the reference's uniform initialisation of the banks
        self.register_buffer("memory_s", torch.rand(n_data, config.feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(n_data, config.feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z", torch.full((2,), -1.0))  # set from the first batch, then fixed

    @classmethod
    def validate(cls, config, cfg) -> None:
        if config.nce_m > 1:
            raise ConfigError(f"loss.terms.crd.nce_m={config.nce_m}: the memory momentum must be in [0, 1]")

    @classmethod
    def build(cls, config, context: FeatureContext) -> "CRD":
        if not context.train_size:
            raise ConfigError("loss.terms.crd needs each sample's position in the training split (its memory bank "
                              "is indexed by it), which this run's data does not give; use strategy=kd on a "
                              "dataset held in memory (digits, fashion_mnist, cifar*, image folders)")
        if current_world().distributed:  # each process would update only its shard's rows of its own bank
            raise ConfigError("loss.terms.crd keeps its memory bank in one process; with several processes "
                              "(device.processes>1 or torchrun) the banks would drift apart; run it in one process")
        return cls(config, *pick_one(cls.name, config, context), context.train_size)

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        if inputs.index is None:
            raise ConfigError("loss.terms.crd needs the batch's sample positions (TermInputs.index); this strategy "
                              "gives none; use strategy=kd")
        s, t = self.read(inputs)
        with torch.autocast(inputs.logits.device.type, enabled=False):  # exp(<w, v>/T) overflows float16
            v_s = self.embed_s(s.float())
            v_t = self.embed_t(t.float())
            index = inputs.index.to(v_s.device)
            idx = torch.randint(0, self.n_data, (len(index), self.k + 1), device=v_s.device)
            idx[:, 0] = index
            if self.z[0] < 0:  # the reference fixes each side's normaliser from its first batch
                with torch.no_grad():
                    for side, (memory, v) in enumerate(((self.memory_t, v_s), (self.memory_s, v_t))):
                        self.z[side] = torch.exp(torch.bmm(memory[idx], v.unsqueeze(2)) / self.config.nce_t
                                                 ).mean() * self.n_data
            loss = crd_loss(v_s, v_t, self.memory_s, self.memory_t, idx, self.z, self.config.nce_t, self.n_data)
            self.update_memory(index, v_s.detach(), v_t.detach())
        return self.weighted(loss)

    @torch.no_grad()
    def update_memory(self, index: Tensor, v_s: Tensor, v_t: Tensor) -> None:
        m = self.config.nce_m
        for memory, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            memory[index] = F.normalize(memory[index] * m + v * (1 - m), dim=1)
