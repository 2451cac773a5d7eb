"""Vector quantizer with an EMA codebook, k-means initialisation and dead-code revival.

``VectorQuantizer(num_codes, dim)`` maps vectors ``z (..., dim)`` to their nearest codebook entry.

- Gradients: straight-through estimator (``z + (q - z).detach()``), so the encoder receives the
  decoder's gradient as if quantization were the identity.
- Loss: the commitment term ``beta * ||z - sg(q)||^2`` only; the codebook itself is not trained by
  gradient but as an exponential moving average of the vectors assigned to each code
  (van den Oord et al. 2017, appendix; Razavi et al. 2019).
- Collapse guards: on the first training batch the codebook is initialised by k-means(++) on that batch
  (no code starts far from the data), and a code that no vector chose for ``revive_after``
  consecutive training steps is moved onto a randomly chosen vector of the current batch.
- Reporting: every forward returns the batch perplexity ``exp(H(p))`` and the number of codes used
  (over all ranks when the forward updates the codebook, of this process otherwise: evaluation and
  encoding never issue collectives, so rank 0 may run them alone).
- Distributed: under ``torch.distributed`` the EMA statistics are summed over ranks and the random
  choices (k-means init, revival) are made on rank 0 and broadcast, so every rank keeps an identical
  codebook without relying on DDP's buffer broadcast.

Codebook state lives in buffers, so it is part of ``state_dict()`` (and of safetensors checkpoints).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class VQOutput:
    """Result of ``VectorQuantizer.forward``."""

    quantized: torch.Tensor    # (..., dim) straight-through quantized vectors (value = codebook entry)
    ids: torch.Tensor          # (...) int64 code indices
    loss: torch.Tensor         # scalar commitment loss (already multiplied by beta)
    perplexity: torch.Tensor   # scalar, batch code perplexity (1 = collapse, num_codes = uniform)
    codes_used: torch.Tensor   # scalar, distinct codes chosen in this batch (all ranks when updating)


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def codebook_usage(ids: torch.Tensor, num_codes: int) -> tuple[float, int]:
    """(perplexity, codes in use) of a set of code ids, e.g. collected over an evaluation set."""
    counts = torch.bincount(ids.reshape(-1).long().cpu(), minlength=num_codes).float()
    p = counts / counts.sum().clamp_min(1)
    perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()).item()
    return perplexity, int((counts > 0).sum().item())


def kmeans(x: torch.Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd k-means with k-means++ seeding on (N, d) float32; returns (k, d) centres.

    With fewer points than centres (N < k) the points are repeated with a little noise; an empty
    cluster is re-seeded at a random data point.
    """
    n = x.shape[0]
    if n < k:
        idx = torch.randint(0, n, (k,), generator=generator).to(x.device)
        noise = torch.randn((k, x.shape[1]), generator=generator).to(x.device)
        return x[idx] + 1e-3 * x.std().clamp_min(1e-6) * noise
    centres = x[torch.randint(0, n, (1,), generator=generator).to(x.device)]
    d2 = torch.cdist(x, centres).squeeze(1) ** 2
    for _ in range(1, k):                                   # k-means++: sample proportional to D^2
        probs = d2.cpu() / d2.sum().cpu() if float(d2.sum()) > 0 else torch.full((n,), 1.0 / n)
        nxt = x[torch.multinomial(probs, 1, generator=generator).to(x.device)]
        centres = torch.cat([centres, nxt])
        d2 = torch.minimum(d2, torch.cdist(x, nxt).squeeze(1) ** 2)
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        empty = counts == 0
        centres = torch.where(empty[:, None], centres, sums / counts.clamp_min(1)[:, None])
        if empty.any():
            centres[empty] = x[torch.randint(0, n, (int(empty.sum()),), generator=generator).to(x.device)]
    return centres


class VectorQuantizer(nn.Module):
    """EMA vector quantizer (see module docstring).

    Args:
        num_codes: codebook size.
        dim: code vector dimension.
        beta: commitment loss weight (0.25 as in VQ-VAE).
        decay: EMA decay of the codebook statistics (0.99; lower adapts faster on small data).
        eps: Laplace smoothing of the EMA cluster sizes.
        revive_after: a code unused for this many consecutive training steps is revived (0 disables).
        kmeans_iters: k-means iterations of the data-dependent initialisation (0 = random data points).
    """

    def __init__(self, num_codes: int, dim: int, *, beta: float = 0.25, decay: float = 0.99,
                 eps: float = 1e-5, revive_after: int = 20, kmeans_iters: int = 10):
        super().__init__()
        if num_codes < 1 or dim < 1:
            raise ValueError(f"num_codes and dim must be >= 1, got {num_codes}, {dim}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.num_codes, self.dim = num_codes, dim
        self.beta, self.decay, self.eps = beta, decay, eps
        self.revive_after, self.kmeans_iters = revive_after, kmeans_iters
        self.register_buffer("embed", torch.randn(num_codes, dim) * 0.1)
        self.register_buffer("ema_count", torch.ones(num_codes))
        self.register_buffer("ema_sum", self.embed.clone())
        self.register_buffer("unused_steps", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(False))

    # ---- lookups -------------------------------------------------------------------------------
    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Codebook vectors for integer ids (...) -> (..., dim)."""
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.num_codes):
            raise ValueError(f"code ids must be in [0, {self.num_codes}), got range "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        return F.embedding(ids.long(), self.embed)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of (N, dim)."""
        e = self.embed
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)[None]
        return d.argmin(dim=1)

    # ---- training-time codebook maintenance -----------------------------------------------------
    def _broadcast(self, t: torch.Tensor) -> torch.Tensor:
        if _dist_on():
            dist.broadcast(t, src=0)
        return t

    @torch.no_grad()
    def _init_codebook(self, flat: torch.Tensor) -> None:
        centres = kmeans(flat, self.num_codes, self.kmeans_iters) if flat.shape[0] else self.embed.clone()
        centres = self._broadcast(centres.contiguous())
        self.embed.copy_(centres)
        self.ema_sum.copy_(centres)
        self.ema_count.fill_(1.0)
        self.unused_steps.zero_()
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        counts = torch.bincount(ids, minlength=self.num_codes).to(flat.dtype)
        sums = torch.zeros(self.num_codes, self.dim, device=flat.device, dtype=flat.dtype).index_add_(0, ids, flat)
        if _dist_on():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (n + self.num_codes * self.eps) * n
        self.embed.copy_(self.ema_sum / smoothed[:, None])
        return counts

    @torch.no_grad()
    def _revive(self, flat: torch.Tensor, counts: torch.Tensor) -> None:
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        if self.revive_after <= 0 or flat.shape[0] == 0:
            return
        dead = self.unused_steps >= self.revive_after
        if not bool(dead.any()):
            return
        n_dead = int(dead.sum())
        pick = flat[torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)]
        pick = pick + 1e-3 * flat.std().clamp_min(1e-6) * torch.randn_like(pick)
        pick = self._broadcast(pick.contiguous())
        self.embed[dead] = pick
        self.ema_sum[dead] = pick
        self.ema_count[dead] = 1.0
        self.unused_steps[dead] = 0

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None, update: bool | None = None) -> VQOutput:
        """Quantize ``z (..., dim)``.

        mask: optional bool (...) marking valid vectors; invalid ones are quantized but excluded from
            the loss, the statistics and the codebook update.
        update: update the codebook (init / EMA / revival); default ``self.training``.
        """
        if z.shape[-1] != self.dim:
            raise ValueError(f"VectorQuantizer: last dim of z must be {self.dim}, got {tuple(z.shape)}")
        update = self.training if update is None else update
        lead = z.shape[:-1]
        flat = z.reshape(-1, self.dim).float()
        valid = torch.ones(flat.shape[0], dtype=torch.bool, device=z.device) if mask is None \
            else mask.reshape(-1).to(device=z.device, dtype=torch.bool)
        if valid.shape[0] != flat.shape[0]:
            raise ValueError(f"VectorQuantizer: mask shape {tuple(mask.shape)} does not match z {tuple(lead)}")
        fv = flat.detach()[valid]
        if update and not bool(self.initialized):
            self._init_codebook(fv)
        ids = self.nearest(flat.detach())
        q = F.embedding(ids, self.embed)
        if update:
            counts = self._ema_update(fv, ids[valid])
            self._revive(fv, counts)
        else:
            counts = torch.bincount(ids[valid], minlength=self.num_codes).float()   # this process only
        w = valid.float()
        per_vec = (flat - q.detach()).pow(2).mean(dim=1)
        loss = self.beta * (per_vec * w).sum() / w.sum().clamp_min(1.0)
        q_st = flat + (q - flat).detach()
        p = counts / counts.sum().clamp_min(1)
        perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
        return VQOutput(quantized=q_st.to(z.dtype).reshape(*lead, self.dim), ids=ids.reshape(lead), loss=loss,
                        perplexity=perplexity.detach(), codes_used=(counts > 0).sum().detach())
