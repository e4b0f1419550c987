"""PCRec: an HSTU encoder with predictive-coding (PC) steps inside every layer (Xie et al., KDD 2025).

After HSTU layer l has produced the state s (B, L, D) of every slot, T steps (``pc_steps``) of a
user-specific optimisation refine it before it goes on to the next layer. Each user gets its own
sequence-mixing matrix theta (B, L, L), rebuilt from the learned theta_0 on every forward, so no
state survives between calls. With f the activation (``pc_activation``), M the mask of pairs
(t, s) with s < t both real, and P_t = sum_{s < t real} |f(s_s)|^2 (the power of row t's input):

    theta   = theta_0                            theta_0[t] = softmax over s in M_t of w[t - s]
    gamma   = sigmoid(W s + b)                    rate per token and channel, from the layer's output
    repeat T times:
        mu    = theta f(s)                        prediction of each state from the user's earlier states
        eps   = s - mu                            prediction error
        theta = theta + alpha (eps f(s)^T / P) * M     Hebbian update (skipped after the last step:
                                                       nothing reads it)
        s     = s - gamma * eps                   activation update: s moves towards its prediction

Why these choices (the authors' released code, one shared theta mutated in place and never reset,
does not run; DESIGN.md asks for the consistent version):

- **Strictly causal theta (s < t).** Row t of mu, eps and theta only ever reads slots s <= t, so
  the state at t never depends on later items: a packed causal training pass computes each prefix
  exactly as inference does. The diagonal is left out because a state that may predict itself is
  predicted trivially (theta -> identity, eps -> 0) and nothing about the sequence is learned; the
  first real item has no past, so mu = 0 there and its state is scaled by (1 - gamma).
- **theta_0 by distance, rows normalised.** A learned n x n theta_0 indexed by slot would change
  with the amount of left padding; its entries are instead learned logits w by the distance t - s
  (HSTU's relative positions), turned into a softmax over each row's real past. So the first
  prediction is a learned recency-weighted mean of the earlier activations, of the same scale
  whatever the prefix length (a plain sum grew with the length: on Beauty, with the same
  settings, test NDCG@10 0.0379 against 0.0441 with the softmax rows; benchmarks/RESULTS.md).
  Padding rows and columns are masked out of theta, so padding never reaches a real slot (f(0)
  need not be 0: softplus(0) = log 2).
- **Activation update without the top-down term.** The full gradient of sum_t |eps_t|^2 / 2 with
  respect to s_t also holds f'(s_t) * (theta^T eps)_t, which gathers the errors of *later* slots:
  future leakage in a packed pass. It is dropped, so each slot descends its own error with the
  prediction held fixed: s <- s - gamma * eps = (1 - gamma) s + gamma mu, a learned, per-channel
  blend of the state and what the user's own past predicts. gamma in (0, 1) keeps it a convex mix.
- **Normalised Hebbian rate.** eps_t f(s_s) is the negative gradient of |eps_t|^2 / 2 with respect
  to theta[t, s]; dividing by P_t (normalised LMS) makes alpha independent of width, length and
  activation scale, and the update cannot increase |eps_t| (for fixed f) when 0 <= alpha <= 2.
- **fp32.** gamma, theta, mu, eps and all their updates run with autocast disabled, in fp32, under
  bf16 training and in fp16 / bf16 exports (the rate's weights and theta_0 are read as fp32 there); the
  refined state goes back to the layer's dtype (a float64 model keeps float64 throughout).
- **Static graph.** T is a Python int fixed at construction and the loop over it has no
  data-dependent branch, so ``torch.export`` unrolls it into one static graph. T = 0 is HSTU
  exactly (the PC modules are skipped; the HSTU layers are the same code and weights).

The update adds one (B, L, L) x (B, L, D) product per step plus, for steps before the last, one
(B, L, D) x (B, D, L) outer product, per layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.config import ModelConfig
from seqrec.models.hstu import HSTUEncoder
from seqrec.models.inputs import distances

ACTIVATIONS = {"softplus": F.softplus, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": F.relu,
               "identity": lambda s: s}


class PCRecEncoder(HSTUEncoder):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)  # the HSTU layers, drawn as HSTU draws them
        with torch.random.fork_rng(devices=[]):  # the PC modules' draws leave the stream as HSTU leaves it, so
            # with one seed the item table, training's batch order and dropout masks are HSTU's too
            self.pc_steps = nn.ModuleList(PredictiveCoding(cfg) for _ in range(cfg.layers))

    def after_layer(self, index: int, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.pc_steps[index](x, mask)


class PredictiveCoding(nn.Module):
    """T unrolled PC steps on one layer's states; see the module docstring for the equations."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.steps = cfg.pc_steps
        self.alpha = cfg.pc_alpha
        self.activation = ACTIVATIONS[cfg.pc_activation]
        self.theta_0 = nn.Parameter(torch.zeros(cfg.max_length))  # logits w[d], d = t - s in 1..L (index d - 1)
        self.rate = nn.Linear(cfg.dim, cfg.dim)  # gamma = sigmoid(W s + b)
        nn.init.normal_(self.rate.weight, std=0.02)
        nn.init.constant_(self.rate.bias, -2.0)  # gamma ~ 0.12 at first: start close to HSTU

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """states (B, L, D) zero at padding, mask (B, L) bool -> refined states (B, L, D)."""
        if self.steps == 0:
            return states
        with torch.autocast(states.device.type, enabled=False):
            dtype = torch.promote_types(states.dtype, torch.float32)  # fp32, or fp64 for a float64 model
            s = states.to(dtype)  # (B, L, D)
            gamma = torch.sigmoid(F.linear(s, self.rate.weight.to(dtype), self.rate.bias.to(dtype)))  # (B, L, D)
            pairs = _past_pairs(mask).to(dtype)  # (B, L, L): 1 where s < t, both real
            theta = self._initial_theta(pairs)  # (B, L, L)
            for step in range(self.steps):
                f = self.activation(s)  # (B, L, D)
                eps = s - theta @ f  # [B,L,L] x [B,L,D] -> [B,L,D]
                if step + 1 < self.steps:
                    theta = theta + self.alpha * _hebbian(eps, f, pairs)
                s = s - gamma * eps
        return s.to(states.dtype)

    def _initial_theta(self, pairs: torch.Tensor) -> torch.Tensor:
        """theta_0: each row a softmax over its real past of the learned logits by distance, (B, L, L)."""
        length = pairs.shape[-1]
        index = (distances(length, pairs.device) - 1).clamp(0, self.theta_0.shape[0] - 1)  # (L, L)
        logits = self.theta_0.to(pairs.dtype)[index].masked_fill(pairs == 0, -1e9)  # (B, L, L); no past: all -1e9
        return torch.softmax(logits, dim=-1) * pairs  # (B, L, L), rows sum to 1 (0 with no past)


def _hebbian(eps: torch.Tensor, f: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Normalised Hebbian step: eps_t . f_s / P_t on the allowed pairs, (B, L, L)."""
    power = pairs @ f.pow(2).sum(-1, keepdim=True)  # [B,L,L] x [B,L,1] -> [B,L,1]
    return (eps @ f.transpose(1, 2)) * pairs / power.clamp_min(1e-6)  # [B,L,D] x [B,D,L] -> [B,L,L]


def _past_pairs(mask: torch.Tensor) -> torch.Tensor:
    """(B, L, L) float: 1 where key s is strictly before query t and both are real items."""
    before = distances(mask.shape[1], mask.device) > 0  # (L, L)
    return (before & mask.unsqueeze(1) & mask.unsqueeze(2)).float()
