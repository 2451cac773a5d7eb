"""Semantic latent action tokenizer: the two-stage VQ-VAE that defines the ``<ACT_k>`` vocabulary.

Stage A (geometry), trained first:
    trace (B, W, 2) in [0,1]^2 -> TraceEncoder (temporal convolutions, ``trace_downsample`` stride-2
    levels) -> z_tau (B, T_c, trace_code_dim), T_c = W / 2**trace_downsample -> trace VQ (trace codebook)
    -> trace code (B, T_c, trace_code_dim) -> TraceDecoder -> reconstructed trace (B, W, 2).
    L_A = L_vq(trace) + L1(trace recon).

Stage B (visual grounding), trace encoder and trace codebook frozen:
    patch features of o_t and o_{t+H} (a transformers ``Dinov2Model``; CLS dropped) ->
    K learned latent queries + the trace code tokens attend to each other and cross-attend to the
    patches of both frames (``fusion_layers`` pre-LN blocks) -> the K query outputs -> latent VQ
    (codebook of ``latent_codebook_size``: ids are the ``<ACT_k>`` tokens) -> two decoders:
    a latent trace decoder (K codes -> W points) and a visual decoder that predicts o_{t+H} from the
    patch features of o_t plus the K latent codes (as a residual on o_t: ``predict_visual``).
    L_B = L_vq(latent) + L1(trace recon from latents) + MSE(visual recon).
    L_LAT = L_vq + L_trace_recon + L_visual_recon (``stage="joint"`` trains both at once).

Visual reconstruction target (``visual_target``): ``"features"`` = the layer-normalised patch features
of o_{t+H} (as UniVLA / the authors do) - right for a frozen pretrained DINOv2; ``"pixels"`` = the
RGB patches of o_{t+H} - used when the vision tower is trained jointly (tiny configs), because a jointly
trained feature target can collapse to a constant. ``"auto"`` picks features iff the tower is frozen.

The decoders exist only for training: ``drop_decoders()`` removes them and
``save_pretrained(dir, include_decoders=False)`` writes an encoder-only checkpoint.

Checkpoint = directory with ``config.json`` (``LatentTokenizerConfig`` + the vision tower's config, so
loading never needs the original pretrained path) and ``model.safetensors``; ``codebook_version`` is a
hash of every weight that determines ``encode`` so a VLM checkpoint can check that its latent-id labels
came from the same codebook.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..traces import DEFAULT_WINDOW
from .vq import VectorQuantizer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "semanticvla_latent_tokenizer"


@dataclass
class LatentTokenizerConfig:
    """Configuration of :class:`LatentTokenizer` (defaults: the authors' release where it says)."""

    window: int = DEFAULT_WINDOW          # W, trace points per sample
    frame_horizon: int = DEFAULT_WINDOW - 1  # H of o_{t+H}: the frame at the end of the trace window
    image_size: int = 224                 # S, square input images (the data pipeline resizes)
    # stage A: trace VQ-VAE
    trace_hidden: int = 128               # channels of the temporal conv encoder / decoder MLP
    trace_downsample: int = 2             # stride-2 levels: T_c = W / 2**trace_downsample (12 -> 3)
    trace_code_dim: int = 32
    trace_codebook_size: int = 128
    # stage B: latent action VQ
    num_latent_tokens: int = 4            # K <ACT_k> tokens per step (authors: 4)
    latent_codebook_size: int = 32        # size of the <ACT_k> vocabulary (authors: 32)
    latent_code_dim: int = 32
    fusion_dim: int = 256
    fusion_layers: int = 2
    fusion_heads: int = 4
    visual_decoder_layers: int = 2
    visual_target: str = "auto"           # "features" | "pixels" | "auto" (features iff tower frozen)
    # vision tower (a transformers Dinov2Model)
    vision_pretrained_path: str | None = None  # local DINOv2 directory; None = build from the sizes below
    vision_trainable: bool | None = None  # None: trained jointly iff built from config (no pretrained path)
    vision_hidden: int = 384              # only used without a pretrained path
    vision_layers: int = 6
    vision_heads: int = 6
    vision_patch_size: int = 14
    # VQ and losses
    vq_beta: float = 0.25
    vq_decay: float = 0.95
    vq_revive_after: int = 20
    vq_weight: float = 1.0
    trace_recon_weight: float = 1.0
    visual_recon_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.window % (2 ** self.trace_downsample):
            raise ValueError(f"window ({self.window}) must be divisible by 2**trace_downsample "
                             f"({2 ** self.trace_downsample})")
        if self.visual_target not in ("auto", "features", "pixels"):
            raise ValueError(f"visual_target must be 'auto', 'features' or 'pixels', got {self.visual_target!r}")
        if self.fusion_dim % self.fusion_heads:
            raise ValueError(f"fusion_dim ({self.fusion_dim}) must be divisible by fusion_heads ({self.fusion_heads})")
        for name in ("num_latent_tokens", "latent_codebook_size", "trace_codebook_size", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def trace_code_len(self) -> int:
        return self.window // (2 ** self.trace_downsample)

    @property
    def tower_trainable(self) -> bool:
        return self.vision_pretrained_path is None if self.vision_trainable is None else self.vision_trainable

    @property
    def resolved_visual_target(self) -> str:
        if self.visual_target != "auto":
            return self.visual_target
        return "pixels" if self.tower_trainable else "features"

    @classmethod
    def from_dict(cls, d: dict) -> "LatentTokenizerConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"LatentTokenizerConfig: unknown fields {sorted(unknown)}")
        return cls(**d)


def tokenizer_config(name: str, **overrides) -> LatentTokenizerConfig:
    """Named presets: ``tiny`` (CPU tests: 64 px, 2-layer 64-wide tower trained jointly), ``base``
    (224 px, ViT-S-shaped tower from config, or a DINOv2-S via ``vision_pretrained_path``), ``paper``
    (frozen DINOv2 from ``vision_pretrained_path``, required)."""
    presets = {
        "tiny": dict(image_size=64, trace_hidden=64, trace_code_dim=16, trace_codebook_size=64,
                     latent_code_dim=16, fusion_dim=64, fusion_layers=1, fusion_heads=2,
                     visual_decoder_layers=2, vision_hidden=64, vision_layers=2, vision_heads=2,
                     vision_patch_size=8),
        "base": dict(),
        "paper": dict(fusion_dim=512, fusion_layers=4, fusion_heads=8, visual_decoder_layers=4,
                      trace_hidden=256, trace_codebook_size=256, latent_code_dim=64),
    }
    if name not in presets:
        raise ValueError(f"unknown tokenizer preset {name!r}; choose from {sorted(presets)}")
    cfg = {**presets[name], **overrides}
    if name == "paper" and not cfg.get("vision_pretrained_path"):
        raise ValueError("tokenizer preset 'paper' needs vision_pretrained_path (a local DINOv2 directory)")
    return LatentTokenizerConfig(**cfg)


@dataclass
class TokenizerEncoding:
    """What ``LatentTokenizer.encode`` returns (all batched)."""

    trace_code: torch.Tensor          # (B, T_c, trace_code_dim) quantized trace code
    trace_ids: torch.Tensor           # (B, T_c) int64 trace-codebook ids
    latent_code: torch.Tensor         # (B, K, latent_code_dim) quantized latent codes
    latent_ids: torch.Tensor          # (B, K) int64: the <ACT_k> ids
    extras: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# building blocks
# ------------------------------------------------------------------------------------------------
class ResBlock1d(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.net = nn.Sequential(nn.GroupNorm(1, ch), nn.GELU(), nn.Conv1d(ch, ch, 3, padding=1),
                                 nn.GroupNorm(1, ch), nn.GELU(), nn.Conv1d(ch, ch, 3, padding=1))

    def forward(self, x):
        return x + self.net(x)


class TraceEncoder(nn.Module):
    """Temporal convolutions: (B, W, 2) in [0,1] -> (B, W / 2**levels, code_dim)."""

    def __init__(self, hidden: int, code_dim: int, levels: int):
        super().__init__()
        layers = [nn.Conv1d(2, hidden, 3, padding=1)]
        for _ in range(levels):
            layers += [ResBlock1d(hidden), nn.Conv1d(hidden, hidden, 4, stride=2, padding=1)]
        layers += [ResBlock1d(hidden), nn.GroupNorm(1, hidden), nn.GELU(), nn.Conv1d(hidden, code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, trace: torch.Tensor) -> torch.Tensor:
        x = (trace - 0.5) * 2.0                       # [0,1] -> [-1,1]
        return self.net(x.transpose(1, 2)).transpose(1, 2)


class MLPTraceDecoder(nn.Module):
    """(B, T, d) codes -> (B, W, 2) trace (an MLP on the flattened codes)."""

    def __init__(self, num_codes: int, code_dim: int, hidden: int, window: int):
        super().__init__()
        self.window = window
        self.net = nn.Sequential(nn.Flatten(1), nn.Linear(num_codes * code_dim, hidden * 2), nn.GELU(),
                                 nn.Linear(hidden * 2, hidden * 2), nn.GELU(), nn.Linear(hidden * 2, window * 2))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return 0.5 + 0.5 * self.net(codes).view(-1, self.window, 2)


class Block(nn.Module):
    """Pre-LN transformer block: self-attention, optional cross-attention, MLP."""

    def __init__(self, dim: int, heads: int, cross: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross = cross
        if cross:
            self.ln_q = nn.LayerNorm(dim)
            self.ln_kv = nn.LayerNorm(dim)
            self.xattn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, memory=None):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        if self.cross:
            m = self.ln_kv(memory)
            x = x + self.xattn(self.ln_q(x), m, m, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


def build_vision_tower(cfg: LatentTokenizerConfig, vision_config: dict | None = None) -> nn.Module:
    """A transformers ``Dinov2Model``: from ``vision_config`` (a saved checkpoint), from the local
    pretrained path, or from the config sizes. Never downloads."""
    from transformers import Dinov2Config, Dinov2Model
    if vision_config is not None:
        return Dinov2Model(Dinov2Config.from_dict(vision_config))
    if cfg.vision_pretrained_path:
        if not os.path.isdir(cfg.vision_pretrained_path):
            raise ValueError(f"vision_pretrained_path: {cfg.vision_pretrained_path!r} is not a directory")
        return Dinov2Model.from_pretrained(cfg.vision_pretrained_path, local_files_only=True)
    if cfg.vision_hidden % cfg.vision_heads:
        raise ValueError(f"vision_hidden ({cfg.vision_hidden}) must be divisible by vision_heads ({cfg.vision_heads})")
    return Dinov2Model(Dinov2Config(hidden_size=cfg.vision_hidden, num_hidden_layers=cfg.vision_layers,
                                    num_attention_heads=cfg.vision_heads, mlp_ratio=4,
                                    patch_size=cfg.vision_patch_size, image_size=cfg.image_size))


def _hash_tensors(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# the tokenizer
# ------------------------------------------------------------------------------------------------
class LatentTokenizer(nn.Module):
    """Two-stage VQ-VAE (module docstring). ``forward`` trains; ``encode`` / ``encode_trace`` serve."""

    ENCODER_PREFIXES = ("trace_encoder.", "trace_vq.", "vision.", "patch_proj.", "frame_embed", "latent_queries",
                        "trace_in", "trace_pos", "fusion.", "fusion_norm.", "latent_out.", "latent_vq.")

    def __init__(self, config: LatentTokenizerConfig, with_decoders: bool = True,
                 vision_config: dict | None = None):
        super().__init__()
        self.config = c = config
        # stage A
        self.trace_encoder = TraceEncoder(c.trace_hidden, c.trace_code_dim, c.trace_downsample)
        self.trace_vq = VectorQuantizer(c.trace_codebook_size, c.trace_code_dim, beta=c.vq_beta, decay=c.vq_decay,
                                        revive_after=c.vq_revive_after)
        # stage B
        self.vision = build_vision_tower(c, vision_config)
        if not c.tower_trainable:
            self.vision.requires_grad_(False)
        vcfg = self.vision.config
        self.vision_dim, self.patch_size = vcfg.hidden_size, vcfg.patch_size
        if c.image_size % self.patch_size:
            raise ValueError(f"image_size ({c.image_size}) must be a multiple of the vision patch size ({self.patch_size})")
        self.num_patches = (c.image_size // self.patch_size) ** 2
        d = c.fusion_dim
        self.patch_proj = nn.Linear(self.vision_dim, d)
        self.frame_embed = nn.Parameter(torch.randn(2, d) * 0.02)         # o_t, o_{t+H}
        self.latent_queries = nn.Parameter(torch.randn(c.num_latent_tokens, d) * 0.02)
        self.trace_in = nn.Linear(c.trace_code_dim, d)
        self.trace_pos = nn.Parameter(torch.randn(c.trace_code_len, d) * 0.02)
        self.fusion = nn.ModuleList(Block(d, c.fusion_heads, cross=True) for _ in range(c.fusion_layers))
        self.fusion_norm = nn.LayerNorm(d)
        self.latent_out = nn.Linear(d, c.latent_code_dim)
        self.latent_vq = VectorQuantizer(c.latent_codebook_size, c.latent_code_dim, beta=c.vq_beta, decay=c.vq_decay,
                                         revive_after=c.vq_revive_after)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.with_decoders = False
        if with_decoders:
            self._build_decoders()

    def _build_decoders(self) -> None:
        c, d = self.config, self.config.fusion_dim
        self.trace_decoder = MLPTraceDecoder(c.trace_code_len, c.trace_code_dim, c.trace_hidden, c.window)
        self.latent_trace_decoder = MLPTraceDecoder(c.num_latent_tokens, c.latent_code_dim, c.trace_hidden, c.window)
        target_dim = self.vision_dim if c.resolved_visual_target == "features" else 3 * self.patch_size ** 2
        self.vis_in = nn.Linear(self.vision_dim, d)
        self.vis_latent_in = nn.Linear(c.num_latent_tokens * c.latent_code_dim, d)
        self.vis_pos = nn.Parameter(torch.randn(self.num_patches, d) * 0.02)
        self.vis_blocks = nn.ModuleList(Block(d, c.fusion_heads, cross=False) for _ in range(c.visual_decoder_layers))
        self.vis_norm = nn.LayerNorm(d)
        self.vis_out = nn.Linear(d, target_dim)
        self.with_decoders = True

    def train(self, mode: bool = True) -> "LatentTokenizer":
        super().train(mode)
        if not self.config.tower_trainable:
            self.vision.eval()                  # a frozen pretrained tower always runs in eval mode
        return self

    def drop_decoders(self) -> None:
        """Remove the training-only decoders (the deployed tokenizer only encodes)."""
        for name in ("trace_decoder", "latent_trace_decoder", "vis_in", "vis_latent_in", "vis_pos", "vis_blocks",
                     "vis_norm", "vis_out"):
            if hasattr(self, name):
                delattr(self, name)
        self.with_decoders = False

    # ---- parameter groups per stage --------------------------------------------------------------
    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        """Parameters trained in ``stage`` ("A", "B" or "joint"); the others should be frozen.

        A: trace encoder + trace decoder. B: everything else (the vision tower only if trainable).
        joint: all. DINOv2's ``mask_token`` (masked image modelling only) is never trained, so every
        returned parameter gets a gradient (what DDP without ``find_unused_parameters`` needs).
        """
        if stage not in ("A", "B", "joint"):
            raise ValueError(f"stage must be 'A', 'B' or 'joint', got {stage!r}")
        a_prefixes = ("trace_encoder.", "trace_decoder.")
        out = []
        for name, p in self.named_parameters():
            if name.endswith("mask_token") or (name.startswith("vision.") and not self.config.tower_trainable):
                continue
            in_a = name.startswith(a_prefixes)
            if stage == "joint" or (stage == "A") == in_a:
                out.append(p)
        return out

    def set_stage(self, stage: str) -> None:
        """requires_grad=True exactly on ``stage_parameters(stage)``."""
        keep = {id(p) for p in self.stage_parameters(stage)}
        for p in self.parameters():
            p.requires_grad_(id(p) in keep)

    # ---- pieces --------------------------------------------------------------------------------
    def _check_trace(self, trace: torch.Tensor) -> None:
        W = self.config.window
        if trace.ndim != 3 or trace.shape[1:] != (W, 2):
            raise ValueError(f"trace must have shape (B, {W}, 2), got {tuple(trace.shape)}")

    def encode_trace(self, trace: torch.Tensor, quantize: bool = False) -> torch.Tensor:
        """e_tau for the action decoder: (B, W, 2) -> (B, T_c, trace_code_dim).

        Default ``quantize=False``: the trace encoder's continuous output *before* quantization. It is
        a smooth function of the trace, so a VLM-predicted trace that is slightly off gives a slightly
        different e_tau instead of possibly a different code. ``quantize=True`` returns the trace code.
        A VLM's N anchors are resampled to W points first (``traces.resample_trace(anchors, W)``).
        Called on the frozen tokenizer (no gradient flows back into it from the action decoder when
        the tokenizer's parameters have requires_grad=False).
        """
        self._check_trace(trace)
        z = self.trace_encoder(trace.float())
        return self.trace_vq(z, update=False).quantized if quantize else z

    def encode_anchors(self, anchors: torch.Tensor, quantize: bool = False) -> torch.Tensor:
        """e_tau from N VLM anchors (B, N, 2): resampled uniformly in time to W points (linear
        interpolation, first and last kept; the same as ``traces.resample_trace(..., mode="time")``),
        then ``encode_trace``."""
        if anchors.ndim != 3 or anchors.shape[-1] != 2 or anchors.shape[1] < 1:
            raise ValueError(f"anchors must have shape (B, N, 2), got {tuple(anchors.shape)}")
        a = anchors.float()
        if a.shape[1] == 1:
            dense = a.expand(-1, self.config.window, -1)
        else:
            dense = F.interpolate(a.transpose(1, 2), size=self.config.window, mode="linear",
                                  align_corners=True).transpose(1, 2)
        return self.encode_trace(dense.contiguous(), quantize=quantize)

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> (B, P, vision_dim) DINOv2 patch tokens (CLS dropped)."""
        S = self.config.image_size
        if images.ndim != 4 or images.shape[1:] != (3, S, S):
            raise ValueError(f"images must have shape (B, 3, {S}, {S}) in [0, 1], got {tuple(images.shape)}")
        x = (images.float() - self.pixel_mean) / self.pixel_std
        if self.config.tower_trainable:
            return self.vision(pixel_values=x).last_hidden_state[:, 1:]
        with torch.no_grad():
            return self.vision(pixel_values=x).last_hidden_state[:, 1:]

    def _latents(self, trace_code: torch.Tensor, feats_t: torch.Tensor, feats_tH: torch.Tensor) -> torch.Tensor:
        """Fusion: K latent queries + trace code tokens cross-attend to both frames -> (B, K, latent_code_dim)."""
        B, K = trace_code.shape[0], self.config.num_latent_tokens
        mem = torch.cat([self.patch_proj(feats_t) + self.frame_embed[0], self.patch_proj(feats_tH) + self.frame_embed[1]], 1)
        x = torch.cat([self.latent_queries.expand(B, -1, -1), self.trace_in(trace_code) + self.trace_pos], 1)
        for blk in self.fusion:
            x = blk(x, mem)
        return self.latent_out(self.fusion_norm(x[:, :K]))

    def visual_target(self, image: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """What the visual decoder reconstructs for a frame: (B, P, vision_dim) layer-normalised patch
        features (no gradient into the tower) or (B, P, 3*p*p) RGB patches."""
        if self.config.resolved_visual_target == "features":
            return F.layer_norm(feats.detach(), (self.vision_dim,))
        return self._patchify(image.float())

    def predict_visual(self, image_t: torch.Tensor, feats_t: torch.Tensor, latent_code: torch.Tensor) -> torch.Tensor:
        """Visual decoder: the target of o_{t+H} predicted as the target of o_t plus a residual computed
        from o_t's patch features and the K latent codes (the residual form keeps the static scene out
        of the loss, so the decoder has to use the latents to lower it)."""
        return self.visual_target(image_t, feats_t) + self._visual_decode(feats_t, latent_code)

    def _visual_decode(self, feats_t: torch.Tensor, latent_code: torch.Tensor) -> torch.Tensor:
        # every patch token gets the (flattened) latent codes added, then self-attention over patches
        x = self.vis_in(feats_t) + self.vis_pos + self.vis_latent_in(latent_code.flatten(1))[:, None]
        for blk in self.vis_blocks:
            x = blk(x)
        return self.vis_out(self.vis_norm(x))

    def _patchify(self, images: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        B, C, S, _ = images.shape
        x = images.reshape(B, C, S // p, p, S // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(B, (S // p) ** 2, p * p * C)

    # ---- serving ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, trace: torch.Tensor, image_t: torch.Tensor, image_tH: torch.Tensor) -> TokenizerEncoding:
        """Trace code and latent ids of a batch (no codebook updates, no gradients)."""
        self._check_trace(trace)
        tq = self.trace_vq(self.trace_encoder(trace.float()), update=False)
        lq = self.latent_vq(self._latents(tq.quantized, self.patch_features(image_t), self.patch_features(image_tH)),
                            update=False)
        return TokenizerEncoding(trace_code=tq.quantized, trace_ids=tq.ids, latent_code=lq.quantized, latent_ids=lq.ids)

    def latent_embeddings(self, latent_ids: torch.Tensor) -> torch.Tensor:
        """(B, K) ids -> (B, K, latent_code_dim) codebook vectors."""
        return self.latent_vq.lookup(latent_ids)

    @torch.no_grad()
    def decode_latent_trace(self, latent_ids: torch.Tensor) -> torch.Tensor:
        """(B, K) <ACT_k> ids -> (B, W, 2) the trace the latent decoder reads from them (needs decoders)."""
        if not self.with_decoders:
            raise ValueError("decode_latent_trace needs the decoders (this tokenizer was saved without them)")
        return self.latent_trace_decoder(self.latent_embeddings(latent_ids))

    # ---- training ---------------------------------------------------------------------------------
    def forward(self, trace: torch.Tensor, image_t: torch.Tensor | None = None, image_tH: torch.Tensor | None = None,
                trace_present: torch.Tensor | None = None, stage: str = "joint") -> dict[str, torch.Tensor]:
        """Losses of one batch. ``stage``: "A" (trace VQ-VAE only; images unused), "B" (latent VQ-VAE on a
        frozen stage A) or "joint". Returns ``loss`` plus its parts and detached metrics:
        ``*_perplexity``, ``*_codes_used``, ``trace_err`` / ``latent_trace_err`` (mean Euclidean error of
        the reconstructed points, normalized image units)."""
        if stage not in ("A", "B", "joint"):
            raise ValueError(f"stage must be 'A', 'B' or 'joint', got {stage!r}")
        if not self.with_decoders:
            raise ValueError("training needs the decoders (this tokenizer was saved without them)")
        self._check_trace(trace)
        c, B = self.config, trace.shape[0]
        trace = trace.float()
        present = torch.ones(B, dtype=torch.bool, device=trace.device) if trace_present is None \
            else trace_present.reshape(B).to(trace.device, torch.bool)
        w = present.float()
        out: dict[str, torch.Tensor] = {}

        def trace_loss(pred):
            per = (pred - trace).abs().mean(dim=(1, 2))
            err = (pred - trace).norm(dim=-1).mean(dim=1)
            return (per * w).sum() / w.sum().clamp_min(1), ((err * w).sum() / w.sum().clamp_min(1)).detach()

        train_a = stage in ("A", "joint")
        with torch.set_grad_enabled(torch.is_grad_enabled() and train_a):
            z = self.trace_encoder(trace)
            tq = self.trace_vq(z, mask=present[:, None].expand(-1, z.shape[1]), update=self.training and train_a)
        loss = torch.zeros((), device=trace.device)
        out["trace_perplexity"], out["trace_codes_used"] = tq.perplexity, tq.codes_used
        if train_a:
            rec, err = trace_loss(self.trace_decoder(tq.quantized))
            out["trace_vq_loss"], out["trace_recon_loss"], out["trace_err"] = tq.loss, rec, err
            loss = loss + c.vq_weight * tq.loss + c.trace_recon_weight * rec
        if stage in ("B", "joint"):
            if image_t is None or image_tH is None:
                raise ValueError(f"stage {stage!r} needs image_t and image_tH")
            trace_code = tq.quantized if stage == "joint" else tq.quantized.detach()
            feats = self.patch_features(torch.cat([image_t, image_tH], 0))
            f_t, f_tH = feats[:B], feats[B:]
            lq = self.latent_vq(self._latents(trace_code, f_t, f_tH))
            rec, err = trace_loss(self.latent_trace_decoder(lq.quantized))
            vis = F.mse_loss(self.predict_visual(image_t, f_t, lq.quantized), self.visual_target(image_tH, f_tH))
            out.update(latent_vq_loss=lq.loss, latent_trace_recon_loss=rec, latent_trace_err=err,
                       visual_recon_loss=vis, latent_perplexity=lq.perplexity, latent_codes_used=lq.codes_used)
            loss = loss + c.vq_weight * lq.loss + c.trace_recon_weight * rec + c.visual_recon_weight * vis
        out["loss"] = loss
        return out

    # ---- checkpoints --------------------------------------------------------------------------------
    @property
    def codebook_version(self) -> str:
        """Hash of every weight and codebook that determines ``encode`` (decoders excluded)."""
        sd = {k: v for k, v in self.state_dict().items() if k.startswith(self.ENCODER_PREFIXES)}
        return "lat-" + _hash_tensors(sd)

    def save_pretrained(self, directory: str | os.PathLike, include_decoders: bool = True) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into ``directory``; returns the path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        sd = self.state_dict()
        if not include_decoders:
            sd = {k: v for k, v in sd.items() if k.startswith(self.ENCODER_PREFIXES)}
        version = self.codebook_version
        save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(d / WEIGHTS_NAME),
                  metadata={"format": "pt", "codebook_version": version})
        meta = {"model_type": MODEL_TYPE, "config": asdict(self.config), "vision_config": self.vision.config.to_dict(),
                "has_decoders": bool(include_decoders and self.with_decoders), "codebook_version": version}
        (d / CONFIG_NAME).write_text(json.dumps(meta, indent=2, default=str))
        return d

    @staticmethod
    def read_codebook_version(directory: str | os.PathLike) -> str:
        """The codebook version recorded in a saved tokenizer, without loading weights."""
        return json.loads((Path(directory) / CONFIG_NAME).read_text())["codebook_version"]

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu",
                        with_decoders: bool | None = None) -> "LatentTokenizer":
        """Load a directory written by ``save_pretrained`` (no network; the vision tower is rebuilt from
        the saved config). ``with_decoders`` defaults to whatever was saved. Raises ValueError if the
        weights do not reproduce the recorded ``codebook_version``."""
        d = Path(directory)
        cfg_path = d / CONFIG_NAME
        if not cfg_path.is_file() or not (d / WEIGHTS_NAME).is_file():
            raise ValueError(f"{d}: not a latent tokenizer checkpoint (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        meta = json.loads(cfg_path.read_text())
        if meta.get("model_type") != MODEL_TYPE:
            raise ValueError(f"{cfg_path}: model_type is {meta.get('model_type')!r}, expected {MODEL_TYPE!r}")
        has_dec = bool(meta.get("has_decoders", False))
        if with_decoders and not has_dec:
            raise ValueError(f"{d}: saved without decoders, cannot load with_decoders=True")
        with_dec = has_dec if with_decoders is None else with_decoders
        model = cls(LatentTokenizerConfig.from_dict(meta["config"]), with_decoders=with_dec,
                    vision_config=meta["vision_config"])
        sd = load_file(str(d / WEIGHTS_NAME), device=str(map_location))
        if not with_dec:
            sd = {k: v for k, v in sd.items() if k.startswith(cls.ENCODER_PREFIXES)}
        model.load_state_dict(sd, strict=True)
        model.to(map_location)
        if model.codebook_version != meta["codebook_version"]:
            raise ValueError(f"{d}: weights give codebook_version {model.codebook_version}, "
                             f"config.json records {meta['codebook_version']}")
        return model
