"""Flow-matching action decoder: noisy action chunk (H x D) -> velocity, conditioned on [e_tau, E_a, E_v, state].

Architecture (nanoGPT-sized): the H noisy actions are projected to ``d_model`` tokens with a learned
position embedding; each of ``n_layers`` blocks does self-attention over the chunk, cross-attention to
the condition memory and an MLP, every sub-layer pre-normed with an adaptive LayerNorm whose shift /
scale / gate come from the flow time t (DiT-style adaLN-zero).

Condition memory: each group that is passed gets its own linear projection and a learned type
embedding, and the groups present are concatenated:
    e_tau (B, T_tau, trace_dim)   the predicted trace through the frozen tokenizer trace encoder
    e_a   (B, K, latent_dim)      the VLM's last-layer hidden states at the <ACT_k> positions
    e_v   (B, N_v, visual_dim)    visual features
    state (B, state_dim)          optional proprioception, one token
A group passed as ``None`` is *absent*: it contributes no tokens at all (no placeholder, no type
embedding), so switching it off is a real change of the computation. With no group at all the
cross-attention sub-layers are skipped (an unconditional model). Per-group key masks
(``masks={"e_v": (B, N_v) bool, True = valid}``) allow padded groups.

Global conditioning (``global_cond``, off by default): besides cross-attention, a small MLP of the state
and of the last ``global_tokens`` rows of e_v (the visual stem's keypoint tokens; each row projected to
``GLOBAL_ROW_DIM`` numbers, then all concatenated) is added to the flow-time embedding that drives every
block's adaLN (the FiLM-style global conditioning of diffusion policy, Chi et al. 2023). Cross-attention
has to *find* a keypoint among ~100 memory rows before it can use its coordinates; this path hands the
coordinates to every layer directly. It reads only groups that are already passed (e_v, state), so the
paper's condition set is unchanged. Zero-initialised output: it starts as a no-op.

Image age (``image_age_cond``, off by default): on a running robot the images a plan reads are older than the
state the chunk is decoded from (the planning time, ~4 control steps on the shipped graph). A decoder trained on
a mix of fresh and delayed images without knowing which hedges between the two (the delay fine-tune lost 14 of
100 episodes without delay). With ``image_age_cond`` a small MLP of the age (control steps / IMAGE_AGE_SCALE)
is added to the same adaLN input, so one decoder serves both. Zero-initialised output: a decoder that gains it
computes exactly what it did before, until trained.

Rectified flow (Liu et al. 2022; pi0-style): x_t = (1 - t) * noise + t * actions, target velocity
v = actions - noise, t ~ U(0, 1) (or logit-normal); sampling integrates dx/dt = v(x_t, t) from t = 0
(pure noise) to t = 1 with ``num_steps`` Euler steps. Actions are expected NORMALIZED (about [-1, 1]).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

GROUPS = ("e_tau", "e_a", "e_v", "state")
RTC_GUIDANCE_MAX = 5.0   # beta of real-time chunking (Black et al. 2025): the cap on the guidance weight
GLOBAL_ROW_DIM = 8     # numbers kept per e_v row by the global conditioning (a keypoint token is linear in x, y)
IMAGE_AGE_SCALE = 8.0  # image ages (control steps) are read as age / IMAGE_AGE_SCALE (training delays 0-8)
IMAGE_AGE_HIDDEN = 32


@dataclass
class FlowDecoderConfig:
    """Configuration of :class:`FlowMatchingDecoder`. A ``*_dim`` of 0 means that group is never used."""

    horizon: int = 8            # H, actions per chunk (16 for multi-embodiment data)
    action_dim: int = 7         # D, 7-D ee_delta (actions.py)
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    trace_dim: int = 0          # e_tau feature size (tokenizer trace_code_dim); 0 = no e_tau input
    latent_dim: int = 0         # E_a feature size (VLM hidden size); 0 = no E_a input
    visual_dim: int = 0         # E_v feature size; 0 = no E_v input
    state_dim: int = 0          # proprio state size; 0 = no state token
    num_steps: int = 10         # default Euler steps of ``sample``
    time_sampling: str = "uniform"  # "uniform" | "logit_normal" (training time distribution)
    global_cond: bool = False   # also condition adaLN on an MLP of state + the last global_tokens e_v rows
    global_tokens: int = 0      # rows of e_v read by global_cond (resolved from the stem by SemanticVLAConfig)
    image_age_cond: bool = False  # also condition adaLN on how many control steps the images are older than the state

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.time_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"time_sampling must be 'uniform' or 'logit_normal', got {self.time_sampling!r}")
        if self.horizon < 1 or self.action_dim < 1 or self.num_steps < 1:
            raise ValueError("horizon, action_dim and num_steps must be >= 1")
        if self.global_tokens < 0:
            raise ValueError(f"global_tokens must be >= 0, got {self.global_tokens}")

    @property
    def global_in_dim(self) -> int:
        """Input width of the global-conditioning MLP (0: global conditioning off or nothing to read)."""
        if not self.global_cond:
            return 0
        rows = GLOBAL_ROW_DIM * self.global_tokens if self.visual_dim > 0 else 0
        return rows + self.state_dim

    def group_dims(self) -> dict[str, int]:
        return {"e_tau": self.trace_dim, "e_a": self.latent_dim, "e_v": self.visual_dim, "state": self.state_dim}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def _modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class FlowBlock(nn.Module):
    """adaLN-zero block: self-attn, cross-attn (skipped without memory), MLP."""

    def __init__(self, d: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False)
        self.norm_mem = nn.LayerNorm(d)
        self.xattn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.norm3 = nn.LayerNorm(d, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_ratio * d, d))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 9 * d))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x, c, memory=None, memory_pad=None):
        s1, g1, b1, s2, g2, b2, s3, g3, b3 = self.ada(c).chunk(9, dim=-1)
        h = _modulate(self.norm1(x), s1, g1)
        x = x + (1 + b1[:, None]) * self.attn(h, h, h, need_weights=False)[0]
        if memory is not None:
            h = _modulate(self.norm2(x), s2, g2)
            m = self.norm_mem(memory)
            x = x + (1 + b2[:, None]) * self.xattn(h, m, m, key_padding_mask=memory_pad, need_weights=False)[0]
        h = _modulate(self.norm3(x), s3, g3)
        return x + (1 + b3[:, None]) * self.mlp(h)


class FlowMatchingDecoder(nn.Module):
    """Rectified-flow action decoder (module docstring)."""

    def __init__(self, config: FlowDecoderConfig):
        super().__init__()
        self.config = c = config
        d = c.d_model
        self.action_in = nn.Linear(c.action_dim, d)
        self.pos = nn.Parameter(torch.randn(c.horizon, d) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.cond_proj = nn.ModuleDict({g: nn.Linear(dim, d) for g, dim in c.group_dims().items() if dim > 0})
        self.type_embed = nn.ParameterDict({g: nn.Parameter(torch.randn(d) * 0.02) for g in self.cond_proj})
        self.blocks = nn.ModuleList(FlowBlock(d, c.n_heads, c.mlp_ratio, c.dropout) for _ in range(c.n_layers))
        self.global_rows = (nn.Linear(c.visual_dim, GLOBAL_ROW_DIM)
                            if c.global_in_dim and c.global_tokens and c.visual_dim else None)
        self.global_mlp = (nn.Sequential(nn.Linear(c.global_in_dim, d), nn.SiLU(), nn.Linear(d, d))
                           if c.global_in_dim else None)
        if self.global_mlp is not None:
            nn.init.zeros_(self.global_mlp[2].weight)
            nn.init.zeros_(self.global_mlp[2].bias)
        # image age (``image_age_cond``): zero-initialised output, so a decoder that gains it computes what it did
        self.age_mlp = (nn.Sequential(nn.Linear(1, IMAGE_AGE_HIDDEN), nn.SiLU(), nn.Linear(IMAGE_AGE_HIDDEN, d))
                        if c.image_age_cond else None)
        if self.age_mlp is not None:
            nn.init.zeros_(self.age_mlp[2].weight)
            nn.init.zeros_(self.age_mlp[2].bias)
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.action_out = nn.Linear(d, c.action_dim)
        for lin in (self.ada_out[1], self.action_out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # ---- conditioning ----------------------------------------------------------------------------
    def build_memory(self, e_tau=None, e_a=None, e_v=None, state=None, masks: dict | None = None
                     ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Concatenate the present groups -> (memory (B, M, d), key padding mask (B, M) True = ignore)
        or (None, None) when no group is present."""
        given = {"e_tau": e_tau, "e_a": e_a, "e_v": e_v, "state": state}
        masks = masks or {}
        unknown = set(masks) - set(GROUPS)
        if unknown:
            raise ValueError(f"masks: unknown groups {sorted(unknown)}; expected some of {GROUPS}")
        toks, valid = [], []
        for g in GROUPS:
            x = given[g]
            if x is None:
                continue
            if g not in self.cond_proj:
                field = {"e_tau": "trace_dim", "e_a": "latent_dim", "e_v": "visual_dim", "state": "state_dim"}[g]
                raise ValueError(f"{g} was passed but FlowDecoderConfig.{field} = 0 configures no such input")
            if g == "state":
                x = x[:, None]
            dim = self.cond_proj[g].in_features
            if x.ndim != 3 or x.shape[-1] != dim:
                want = f"(B, {dim})" if g == "state" else f"(B, T, {dim})"
                got = tuple(given[g].shape)
                raise ValueError(f"{g}: expected shape {want}, got {got}")
            toks.append(self.cond_proj[g](x.float()) + self.type_embed[g])
            m = masks.get(g)
            if m is None:
                m = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            elif m.shape != x.shape[:2]:
                raise ValueError(f"masks[{g!r}]: expected shape {tuple(x.shape[:2])}, got {tuple(m.shape)}")
            valid.append(m.bool())
        if not toks:
            return None, None
        B = {t.shape[0] for t in toks}
        if len(B) != 1:
            raise ValueError(f"condition groups disagree on batch size: {sorted(B)}")
        memory, ok = torch.cat(toks, 1), torch.cat(valid, 1)
        if not bool(ok.any(dim=1).all()):
            raise ValueError("every sample needs at least one valid condition token (check masks)")
        return memory, ~ok

    def global_condition(self, e_v=None, state=None, image_age=None) -> torch.Tensor | None:
        """(B, d_model) global conditioning vector, or None when ``global_cond`` and ``image_age_cond`` are off
        (module docstring). ``image_age``: (B,) or a number, control steps by which the images behind ``e_v`` are
        older than ``state`` (None: 0, images as fresh as the state); read only with ``image_age_cond``."""
        age = self._image_age_condition(image_age, e_v, state)
        if self.global_mlp is None:
            return age
        cond = self._global_mlp_condition(e_v, state)
        return cond if age is None else cond + age

    def _image_age_condition(self, image_age, e_v, state) -> torch.Tensor | None:
        if self.age_mlp is None:
            return None
        ref = next((x for x in (e_v, state) if x is not None), None)
        dev = self.pos.device
        age = torch.zeros(1, device=dev) if image_age is None else \
            torch.as_tensor(image_age, dtype=torch.float32, device=dev).reshape(-1)
        if ref is not None and age.numel() == 1:
            age = age.expand(ref.shape[0])       # (otherwise (B,) or one number, broadcast over the batch)
        if not torch.isfinite(age).all() or (age < 0).any():
            raise ValueError(f"image_age must be finite and >= 0 control steps, got {image_age}")
        return self.age_mlp((age.float() / IMAGE_AGE_SCALE)[:, None])

    def _global_mlp_condition(self, e_v, state) -> torch.Tensor:
        c, parts = self.config, []
        if self.global_rows is not None:
            if e_v is None or e_v.ndim != 3 or e_v.shape[1] < c.global_tokens:
                raise ValueError(f"global_cond: e_v must have at least {c.global_tokens} rows, got "
                                 f"{None if e_v is None else tuple(e_v.shape)}")
            parts.append(self.global_rows(e_v[:, -c.global_tokens:].float()).flatten(1))
        if c.state_dim:
            if state is None:
                raise ValueError("global_cond: this decoder reads the state; pass state")
            parts.append(state.float().reshape(state.shape[0], -1))
        return self.global_mlp(torch.cat(parts, 1))

    # ---- network ------------------------------------------------------------------------------------
    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, memory: torch.Tensor | None,
                 memory_pad: torch.Tensor | None = None, cond: torch.Tensor | None = None) -> torch.Tensor:
        """v(x_t, t | memory, cond): (B, H, D), (B,) -> (B, H, D); ``cond`` = :meth:`global_condition`."""
        c = self.config
        if x_t.ndim != 3 or x_t.shape[1:] != (c.horizon, c.action_dim):
            raise ValueError(f"actions must have shape (B, {c.horizon}, {c.action_dim}), got {tuple(x_t.shape)}")
        temb = self.time_mlp(timestep_embedding(t, c.d_model))
        if cond is not None:
            temb = temb + cond
        x = self.action_in(x_t.float()) + self.pos
        for blk in self.blocks:
            x = blk(x, temb, memory, memory_pad)
        shift, scale = self.ada_out(temb).chunk(2, dim=-1)
        return self.action_out(_modulate(self.norm_out(x), shift, scale))

    def forward(self, x_t, t, e_tau=None, e_a=None, e_v=None, state=None, masks=None, image_age=None) -> torch.Tensor:
        memory, pad = self.build_memory(e_tau, e_a, e_v, state, masks)
        return self.velocity(x_t, t, memory, pad, self.global_condition(e_v, state, image_age))

    def sample_time(self, batch: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.config.time_sampling == "uniform":
            return torch.rand(batch, device=device, generator=generator)
        return torch.sigmoid(torch.randn(batch, device=device, generator=generator))

    # ---- training and sampling ------------------------------------------------------------------
    def loss(self, actions: torch.Tensor, e_tau=None, e_a=None, e_v=None, state=None,
             pad_mask: torch.Tensor | None = None, masks: dict | None = None,
             generator: torch.Generator | None = None, image_age=None) -> torch.Tensor:
        """Rectified-flow MSE on a batch of normalized chunks ``actions (B, H, D)``.

        pad_mask: bool (B, H), True where the chunk ran past the episode end (``actions_pad``): those
        steps are excluded from the loss (they still pass through self-attention as inputs).
        """
        B = actions.shape[0]
        actions = actions.float()
        noise = torch.randn(actions.shape, device=actions.device, generator=generator)
        t = self.sample_time(B, actions.device, generator)
        x_t = (1 - t)[:, None, None] * noise + t[:, None, None] * actions
        v = self(x_t, t, e_tau, e_a, e_v, state, masks, image_age)
        err = (v - (actions - noise)).pow(2).mean(dim=-1)                # (B, H)
        if pad_mask is None:
            return err.mean()
        if pad_mask.shape != err.shape:
            raise ValueError(f"pad_mask: expected shape {tuple(err.shape)}, got {tuple(pad_mask.shape)}")
        w = (~pad_mask.bool()).float()
        return (err * w).sum() / w.sum().clamp_min(1.0)

    @torch.no_grad()
    def sample(self, e_tau=None, e_a=None, e_v=None, state=None, masks: dict | None = None, image_age=None,
               num_steps: int | None = None, generator: torch.Generator | None = None,
               batch_size: int | None = None, noise: torch.Tensor | None = None,
               prefix: torch.Tensor | None = None, prefix_weights: torch.Tensor | None = None,
               guidance_max: float = RTC_GUIDANCE_MAX, prefix_method: str = "guidance") -> torch.Tensor:
        """Euler integration from noise (t=0) to actions (t=1): returns (B, H, D) normalized actions.

        num_steps: default ``config.num_steps``. The batch size comes from the conditions (or
        ``batch_size`` / ``noise`` when there are none). ``generator`` or ``noise`` make it reproducible.

        Real-time chunking (Black et al. 2025, "Real-Time Execution of Action Chunking Flow Policies"):
        ``prefix`` (B, H, D) normalized, the previous chunk's actions at this chunk's times, and ``prefix_weights``
        (H,) (:func:`rtc_weights`: 1 for the rows that execute while this chunk is computed, decaying after, 0 where
        the previous chunk has nothing) inpaint the chunk by guided sampling: every step adds the vector-Jacobian
        product of the weighted error between the prefix and the predicted final actions, weighted by
        min(guidance_max, (1 - t) / (t r^2)), r^2 = (1 - t)^2 / (t^2 + (1 - t)^2) (pi-GDM guidance).
        ``prefix_method="replace"``: inpainting by replacement instead (no backward pass, ~4x cheaper): before every
        step the rows are blended, by their weight, with the prefix noised to the current time,
        (1 - t) noise + t prefix; at the end the same with the prefix itself.
        """
        c = self.config
        steps = c.num_steps if num_steps is None else int(num_steps)
        if steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {steps}")
        memory, pad = self.build_memory(e_tau, e_a, e_v, state, masks)
        cond = self.global_condition(e_v, state, image_age)
        device = self.pos.device
        if noise is None:
            B = memory.shape[0] if memory is not None else batch_size
            if B is None:
                raise ValueError("sample: no condition given; pass batch_size or noise")
            noise = torch.randn((B, c.horizon, c.action_dim), generator=generator,
                                device=generator.device if generator is not None else device).to(device)
        x = noise.float().to(device)
        dt = 1.0 / steps
        if prefix is not None:
            if prefix_method == "replace":
                return self._sample_replaced(x, memory, pad, cond, steps, prefix, prefix_weights)
            if prefix_method != "guidance":
                raise ValueError(f"prefix_method must be 'guidance' or 'replace', got {prefix_method!r}")
            return self._sample_guided(x, memory, pad, cond, steps, prefix, prefix_weights, guidance_max)
        for i in range(steps):
            t = torch.full((x.shape[0],), i * dt, device=device)
            x = x + dt * self.velocity(x, t, memory, pad, cond)
        return x

    def _prefix_inputs(self, x, prefix, weights):
        c = self.config
        y = torch.as_tensor(prefix, dtype=torch.float32, device=x.device)
        if y.ndim == 2:
            y = y[None]
        if y.shape[1:] != (c.horizon, c.action_dim):
            raise ValueError(f"prefix must have shape (B, {c.horizon}, {c.action_dim}), got {tuple(y.shape)}")
        if weights is None:
            raise ValueError("prefix_weights are required with a prefix (rtc_weights)")
        w = torch.as_tensor(weights, dtype=torch.float32, device=x.device).reshape(1, c.horizon, 1)
        return y.expand(x.shape[0], -1, -1), w

    def _sample_replaced(self, x, memory, pad, cond, steps, prefix, weights) -> torch.Tensor:
        y, w = self._prefix_inputs(x, prefix, weights)
        noise = x.clone()
        dt = 1.0 / steps
        for i in range(steps):
            tau = i * dt
            x = w * ((1.0 - tau) * noise + tau * y) + (1.0 - w) * x
            t = torch.full((x.shape[0],), tau, device=x.device)
            x = x + dt * self.velocity(x, t, memory, pad, cond)
        return w * y + (1.0 - w) * x

    def _sample_guided(self, x, memory, pad, cond, steps, prefix, weights, guidance_max) -> torch.Tensor:
        y, w = self._prefix_inputs(x, prefix, weights)
        dt = 1.0 / steps
        for i in range(steps):
            tau = i * dt
            t = torch.full((x.shape[0],), tau, device=x.device)
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                v = self.velocity(xg, t, memory, pad, cond)
                a1 = xg + (1.0 - tau) * v                       # the final actions predicted from here
                (g,) = torch.autograd.grad(a1, xg, grad_outputs=(y - a1.detach()) * w)
            if tau > 0:
                r2 = (1.0 - tau) ** 2 / (tau ** 2 + (1.0 - tau) ** 2)
                k = min(float(guidance_max), (1.0 - tau) / (tau * r2))
            else:
                k = float(guidance_max)
            x = x + dt * (v.detach() + k * g)
        return x


def rtc_weights(horizon: int, delay: int, available: int) -> torch.Tensor:
    """Real-time chunking's soft mask (H,): 1 for the ``delay`` rows that execute before the new chunk arrives,
    exponentially decaying over the rest of the previous chunk's ``available`` rows, 0 after them."""
    H, d, n = int(horizon), int(delay), min(int(available), int(horizon))
    if not 0 <= d <= n:
        raise ValueError(f"delay must be in [0, available={n}], got {d}")
    w = torch.zeros(H)
    w[:d] = 1.0
    if n > d:
        i = torch.arange(d, n, dtype=torch.float32)
        ci = (n - i) / (n - d + 1)
        w[d:n] = ci * (torch.exp(ci) - 1) / (math.e - 1)
    return w
