"""Deep mutual learning (Zhang et al. 2018): peers trained together from scratch, each
from the labels and from the other peers' softened, detached outputs. No pretrained teacher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from omegaconf import DictConfig
from torch import nn

from kdrun.sources.checkpoint import unwrap
from kdrun.errors import ConfigError
from kdrun.sources.models import MODEL_NAMES, build_model
from kdrun.runtime import seed_everything
from kdrun.keys import key
from kdrun.strategies.base import Batch, Setup, StepOutput, Strategy, register
from kdrun.methods.terms.compose import LogitTerms, build_logit_terms


@register
class Online(Strategy):
    """Peer 0 is the student: its logits give the train accuracy and it is the saved model.

    Each peer's terms (peer<i>_ce, peer<i>_kd, ...) are the logit terms against every
    other peer, averaged over them: DML's CE + 1/(K-1) sum_l KL(p_l || p_k).
    """

    name = "online"

    @dataclass
    class Config:
        peers: list[str] = key(choices=lambda: MODEL_NAMES)  # the other peers' architectures

    def __init__(self, peers: list[nn.Module], terms: LogitTerms):
        super().__init__(peers[0])
        self.peers = nn.ModuleList(peers)
        self.terms = terms
        self.peer_acc: list[float] = []

    @classmethod
    def validate(cls, cfg: DictConfig) -> None:
        super().validate(cfg)
        if not cfg.strategy.peers:
            raise ConfigError("strategy.peers is empty; name at least one peer, e.g. strategy.peers=[resnet20,resnet8]")

    @classmethod
    def from_config(cls, setup: Setup) -> Online:
        cfg, data = setup.cfg, setup.data
        seed_everything(cfg.seed)  # peers differ: each draws its initial weights in turn, from one seed
        peers = [setup.runtime.prepare(build_model(arch, data.in_channels, data.image_size, data.num_classes))
                 for arch in (cfg.student.arch, *cfg.strategy.peers)]
        return cls(peers, build_logit_terms(cfg))

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.peers.parameters()

    def train(self) -> None:
        self.peers.train()

    def step(self, batch: Batch) -> StepOutput:
        logits = [peer(batch.x) for peer in self.peers]
        losses = {}
        for i, own in enumerate(logits):
            pairs = [self.terms(own, other.detach(), batch.y, batch.epoch, batch.index)
                     for j, other in enumerate(logits) if j != i]
            for term in pairs[0]:
                losses[f"peer{i}_{term}"] = sum(p[term] for p in pairs) / len(pairs)
        return StepOutput(logits[0], losses)

    def epoch_metrics(self, evaluate: Callable[[nn.Module], float]) -> dict:
        self.peer_acc = [evaluate(peer) for peer in self.peers]
        return {f"peer{i}_test_acc": acc for i, acc in enumerate(self.peer_acc)}

    def summary(self) -> dict:
        return {"peers": [{"peer": i, "arch": peer.arch, "final_test_acc": acc}
                          for i, (peer, acc) in enumerate(zip(self.peers, self.peer_acc))]}

    def state_dict(self) -> dict:
        return {"peers": [unwrap(peer).state_dict() for peer in self.peers[1:]]}

    def load_state_dict(self, state: dict) -> None:
        for peer, peer_state in zip(self.peers[1:], state["peers"], strict=True):
            unwrap(peer).load_state_dict(peer_state)
