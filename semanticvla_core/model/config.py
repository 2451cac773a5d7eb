"""``SemanticVLAConfig``: the whole model in one JSON-serializable config, and the named presets.

The top-level fields are the single source of truth for the quantities several parts share; they are
copied into the sub-configs by ``__post_init__`` (so a sub-config value for them is ignored):

* ``image_size``  -> ``vlm.image_size``, ``latent_tokenizer.image_size``
* ``num_latent_tokens`` -> ``latent_tokenizer.num_latent_tokens`` (K ``<ACT_k>`` per step)
* ``horizon``, ``action_dim``, ``state_dim`` -> ``decoder.horizon``, ``.action_dim``, ``.state_dim``

The decoder's condition widths (``trace_dim``, ``latent_dim``, ``visual_dim``) follow from the switches
and the VLM's hidden size: ``decoder_config(vlm_hidden)`` resolves them; the switches are:

* ``use_trace``: the VLM writes the explicit trace before the latent tokens (off = "w/o explicit trace":
  targets and generation are latent tokens only; e_tau is then absent too).
* ``use_latent``: the VLM writes ``<ACT_k>`` tokens and the decoder attends to E_a (off = trace only,
  decoder conditioned without latent tokens).
* ``trace_to_decoder``: the decoder attends to e_tau, the predicted trace through the frozen trace
  encoder (off = the authors' released default: no e_tau).
* both ``use_trace`` and ``use_latent`` off: a conventional VLA. The VLM generates nothing (no decoding
  step at all, L_VLM = 0, no stage 2); the decoder's E_a is then the LM's last-layer hidden states at
  the final K (``num_latent_tokens``) prompt positions (the end of ``...?\nOut:``, which attends to
  the image and the whole instruction) - no extra parameters - together with E_v (+ state). Stage 3
  trains it from a fresh model (LoRA on the LM and the vision towers, the projector, the decoder).

The four comparison variants: (1) full, (2) ``use_trace=False``, (3) ``use_latent=False``,
(4) both off (``vlm_generates`` is False, ``decoder_uses_prompt_states`` is True).
* ``vlm.backbone``: "prismatic" (the paper), "llava" (the off-the-shelf adapter) or a pretrained transformers
  VLM ("qwen2_5_vl", "qwen3_vl", "smolvlm", "paligemma"; ``hf_backbones.py``, ``docs/BACKBONES.md``).
* ``stem`` (``VisualStemConfig``, off by default): a keypoint CNN on the full-resolution agent view (and the
  wrist camera) whose tokens are appended to the decoder's E_v (``model/visual_stem.py``); the demo uses it.

Presets (``get_config(name, **overrides)``):

* ``tiny``: 64 px, two 64-wide 2-layer towers (+ learned image-token positions), Qwen2 128x2 LM,
  trained BPE tokenizer; what tests use
  (well under a second per training step on 2 CPU cores).
* ``base``: a workstation GPU: 224 px, DINOv2-S + SigLIP-B-shaped towers (patch 14, fused), a
  Qwen2-0.5B-shaped LM, trained BPE tokenizer. Random init unless paths are given.
* ``paper``: Prismatic-7B shape: DINOv2-L/14 + SigLIP-so400m/14 at 224 px (second-to-last layer
  features), a 7B Llama-2-shaped LM. Pretrained parts come from local paths passed as overrides
  ``dinov2_path``, ``siglip_path``, ``lm_path``, ``text_tokenizer_path`` (the LM's tokenizer, which
  must tokenize digits one by one, e.g. Llama's); without them the same shapes get random weights
  (what the GPU benchmark measures).
* ``qwen25vl-3b``, ``qwen3vl-2b``, ``smolvlm2-500m``, ``paligemma-3b``: a pretrained transformers VLM from a
  local directory, ``get_config(name, pretrained_path=DIR)`` or ``$SEMANTICVLA_BACKBONE_PATH``; the model's
  own tokenizer; workstation-GPU shapes of the latent tokenizer and decoder. No directory: ValueError.
* ``tiny-qwen2_5_vl``, ``tiny-qwen3_vl``, ``tiny-smolvlm``, ``tiny-paligemma``: 64 px random-init test shapes
  of the same classes (``pretrained_path`` loads a tiny model saved there instead).
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .flow_decoder import FlowDecoderConfig
from .latent_tokenizer import LatentTokenizerConfig, tokenizer_config
from .text_tokenizer import TextTokenizerConfig
from .visual_stem import VisualStemConfig
from .vlm import HF_BACKBONES, VisionTowerConfig, VLMConfig


@dataclass
class SemanticVLAConfig:
    """Everything needed to build a ``SemanticVLAPolicy`` (see the module docstring)."""

    vlm: VLMConfig = field(default_factory=VLMConfig)
    text_tokenizer: TextTokenizerConfig = field(default_factory=TextTokenizerConfig)
    latent_tokenizer: LatentTokenizerConfig = field(default_factory=lambda: tokenizer_config("tiny"))
    decoder: FlowDecoderConfig = field(default_factory=lambda: FlowDecoderConfig(d_model=64, n_layers=2, n_heads=2))
    stem: VisualStemConfig = field(default_factory=VisualStemConfig)   # decoder-side keypoint CNN (off by default)
    use_trace: bool = True            # explicit trace text before the latent tokens
    use_latent: bool = True           # <ACT_k> tokens + E_a for the decoder
    trace_to_decoder: bool = True     # e_tau (frozen trace encoder of the predicted trace) for the decoder
    image_size: int = 64              # S: square model input
    num_anchors: int = 4              # N trace anchors written as text
    num_latent_tokens: int = 4        # K <ACT_k> tokens per step
    horizon: int = 8                  # H: action chunk length
    action_dim: int = 7               # D: 7-D ee_delta (actions.py)
    action_frame: str = "delta"       # what a decoder row is: "delta" (the ee_delta action) or "tcp_pose" (the
                                      # TCP pose the row should reach, robot_state.ACTION_FRAMES); plans are
                                      # ee_delta either way
    state_dim: int = 0                # proprio state fed to the decoder (0 = none)
    control_dt: float = 0.05          # seconds between chunk rows (20 Hz)
    noise_scale: float = 1.0          # run time only: std of the noise the flow ODE starts from (1 = as trained;
                                      # 0 = from its mean: one deterministic "central" chunk per observation)
    preset: str = "tiny"              # name of the preset this config came from (informational)

    def __post_init__(self) -> None:
        if isinstance(self.vlm, dict):
            self.vlm = VLMConfig.from_dict(self.vlm)
        if isinstance(self.text_tokenizer, dict):
            self.text_tokenizer = TextTokenizerConfig.from_dict(self.text_tokenizer)
        if isinstance(self.latent_tokenizer, dict):
            self.latent_tokenizer = LatentTokenizerConfig.from_dict(self.latent_tokenizer)
        if isinstance(self.decoder, dict):
            self.decoder = FlowDecoderConfig(**self.decoder)
        if isinstance(self.stem, dict):
            self.stem = VisualStemConfig(**self.stem)
        for name in ("image_size", "num_anchors", "num_latent_tokens", "horizon", "action_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SemanticVLAConfig.{name} must be >= 1, got {getattr(self, name)}")
        from ..robot_state import ACTION_FRAMES, STATE_DIM
        if self.action_frame not in ACTION_FRAMES:
            raise ValueError(f"SemanticVLAConfig.action_frame must be one of {ACTION_FRAMES}, got {self.action_frame!r}")
        if self.action_frame == "tcp_pose" and self.state_dim not in (0, STATE_DIM):
            raise ValueError(f"SemanticVLAConfig.action_frame='tcp_pose' needs the {STATE_DIM}-D robot state "
                             f"(state_dim {self.state_dim})")
        if self.state_dim < 0:
            raise ValueError(f"SemanticVLAConfig.state_dim must be >= 0, got {self.state_dim}")
        if not (self.noise_scale >= 0 and self.noise_scale == self.noise_scale):
            raise ValueError(f"SemanticVLAConfig.noise_scale must be >= 0, got {self.noise_scale}")
        if not self.control_dt > 0:
            raise ValueError(f"SemanticVLAConfig.control_dt must be > 0, got {self.control_dt}")
        if self.vlm.pretrained_path and self.vlm.backbone in HF_BACKBONES:
            from .hf_backbones import check_model_dir

            check_model_dir(self.vlm.pretrained_path, self.vlm.backbone)   # before the tokenizer is read from it
            if self.text_tokenizer.pretrained_path is None:
                self.text_tokenizer.pretrained_path = self.vlm.pretrained_path   # the model's own tokenizer
        self.vlm.image_size = self.image_size
        self.latent_tokenizer.image_size = self.image_size
        self.latent_tokenizer.num_latent_tokens = self.num_latent_tokens
        self.latent_tokenizer.__post_init__()
        self.decoder.horizon, self.decoder.action_dim = self.horizon, self.action_dim
        self.decoder.state_dim = self.state_dim

    @property
    def codebook_size(self) -> int:
        """C: size of the <ACT_k> vocabulary (the latent tokenizer's codebook)."""
        return self.latent_tokenizer.latent_codebook_size

    @property
    def window(self) -> int:
        """W: dense trace window of the trace encoder (anchors are resampled to W points for e_tau)."""
        return self.latent_tokenizer.window

    @property
    def decoder_uses_trace(self) -> bool:
        return self.trace_to_decoder and self.use_trace

    @property
    def vlm_generates(self) -> bool:
        """False for the conventional-VLA variant (both switches off): the VLM writes no tokens."""
        return self.use_trace or self.use_latent

    @property
    def decoder_uses_prompt_states(self) -> bool:
        """E_a = last-layer hidden states of the final K prompt positions (both switches off)."""
        return not self.vlm_generates

    @property
    def decoder_uses_e_a(self) -> bool:
        """The decoder attends to E_a: the <ACT_k> states (use_latent) or the prompt states (variant 4)."""
        return self.use_latent or self.decoder_uses_prompt_states

    def decoder_config(self, vlm_hidden: int) -> FlowDecoderConfig:
        """The flow decoder config with condition widths resolved from the switches."""
        d = copy.deepcopy(self.decoder)
        d.trace_dim = self.latent_tokenizer.trace_code_dim if self.decoder_uses_trace else 0
        d.latent_dim = vlm_hidden if self.decoder_uses_e_a else 0
        d.visual_dim = vlm_hidden
        d.state_dim = self.state_dim
        d.global_tokens = self.stem.num_tokens if d.global_cond else 0   # the stem's rows at the end of E_v
        return d

    # ---- serialization --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SemanticVLAConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"SemanticVLAConfig: unknown fields {sorted(unknown)}")
        return cls(**copy.deepcopy(d))

    def to_json(self, path: str | Path | None = None) -> str:
        s = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(s)
        return s

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> "SemanticVLAConfig":
        p = Path(path_or_text) if not str(path_or_text).lstrip().startswith("{") else None
        text = p.read_text() if p is not None else str(path_or_text)
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ValueError(f"SemanticVLAConfig: invalid JSON in {p or 'text'}: {e}") from e


# ---------------------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------------------
def _tiny() -> dict:
    return dict(preset="tiny", vlm=VLMConfig(image_position_embedding=True))


def _base() -> dict:
    return dict(
        preset="base", image_size=224,
        vlm=VLMConfig(
            image_size=224,
            vision=[VisionTowerConfig("dinov2", dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                                     patch_size=14)),
                    VisionTowerConfig("siglip", dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                     num_attention_heads=12, patch_size=14))],
            lm_type="qwen2",
            lm_config=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                           num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
                           rope_theta=1000000.0),
            visual_pool=4, max_prompt_tokens=64),
        text_tokenizer=TextTokenizerConfig(vocab_size=4096, corpus_lines=40000),
        latent_tokenizer=tokenizer_config("base"),
        decoder=FlowDecoderConfig(d_model=256, n_layers=4, n_heads=4))


def _paper(dinov2_path=None, siglip_path=None, lm_path=None, text_tokenizer_path=None) -> dict:
    lt = tokenizer_config("paper", vision_pretrained_path=dinov2_path) if dinov2_path else \
        tokenizer_config("base", fusion_dim=512, fusion_layers=4, fusion_heads=8, visual_decoder_layers=4,
                         trace_hidden=256, trace_codebook_size=256, latent_code_dim=64, vision_hidden=1024,
                         vision_layers=24, vision_heads=16)
    return dict(
        preset="paper", image_size=224,
        vlm=VLMConfig(
            image_size=224,
            vision=[VisionTowerConfig("dinov2", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                                     patch_size=14), dinov2_path, feature_layer=-2),
                    VisionTowerConfig("siglip", dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                                     num_attention_heads=16, patch_size=14), siglip_path,
                                      feature_layer=-2)],
            lm_type="llama",
            lm_config=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                           num_key_value_heads=32, max_position_embeddings=2048, tie_word_embeddings=False,
                           rms_norm_eps=1e-5),
            lm_pretrained_path=lm_path, visual_pool=4, max_prompt_tokens=64),
        text_tokenizer=TextTokenizerConfig(pretrained_path=text_tokenizer_path, vocab_size=32000),
        latent_tokenizer=lt,
        decoder=FlowDecoderConfig(d_model=512, n_layers=6, n_heads=8))


# ---- pretrained transformers VLMs (hf_backbones.py; docs/BACKBONES.md) --------------------------------
BACKBONE_PATH_ENV = "SEMANTICVLA_BACKBONE_PATH"
_TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, vocab_size=1152, tie_word_embeddings=False,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None)
_TINY_MROPE = dict(rope_type="default", mrope_section=[2, 3, 3], rope_theta=10000.0)   # head_dim 16
_TINY_QWEN_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=8, spatial_merge_size=2,
                         temporal_patch_size=2, out_hidden_size=64)
TINY_HF_CONFIGS = {   # random-init test shapes of the real classes (64 px: 4x4 or 8x8 image tokens)
    "qwen2_5_vl": dict(model_type="qwen2_5_vl", tie_word_embeddings=True,   # tied head, as Qwen2.5-VL-3B
                       vision_config=dict(_TINY_QWEN_VISION, window_size=32, fullatt_block_indexes=[1]),
                       text_config=dict(_TINY_TEXT, rope_parameters=_TINY_MROPE, tie_word_embeddings=True)),
    "qwen3_vl": dict(model_type="qwen3_vl", tie_word_embeddings=False,
                     vision_config=dict(_TINY_QWEN_VISION, num_position_embeddings=64, deepstack_visual_indexes=[0]),
                     text_config=dict(_TINY_TEXT, head_dim=16,
                                      rope_parameters=dict(_TINY_MROPE, mrope_interleaved=True))),
    "smolvlm": dict(model_type="smolvlm", scale_factor=2, tie_word_embeddings=False,
                    vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       patch_size=8, image_size=64),
                    text_config=dict(_TINY_TEXT, model_type="llama")),
    "paligemma": dict(model_type="paligemma", projection_dim=64, tie_word_embeddings=True,   # tied, as PaliGemma
                      vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=64,
                                         projection_dim=64),
                      text_config=dict(_TINY_TEXT, model_type="gemma", num_key_value_heads=1, head_dim=16,
                                       tie_word_embeddings=True)),
}


def _hf_tiny(backbone: str, pretrained_path: str | None = None) -> dict:
    """Tiny test preset of a transformers VLM: random init from ``TINY_HF_CONFIGS`` (or the tiny model saved
    at ``pretrained_path``), the trained BPE tokenizer unless the directory brings its own."""
    return dict(preset=f"tiny-{backbone}",
                vlm=VLMConfig(backbone=backbone, pretrained_path=pretrained_path,
                              hf_config={} if pretrained_path else copy.deepcopy(TINY_HF_CONFIGS[backbone])))


def _hf_pretrained(name: str, backbone: str, image_size: int, pretrained_path: str | None = None) -> dict:
    """A real pretrained VLM from a local directory (required): workstation-GPU shapes of the other parts
    (as ``paper``). The model's own tokenizer comes from the same directory."""
    if not pretrained_path:
        raise ValueError(f"model preset {name!r} needs the local {backbone} model directory: "
                         f"get_config({name!r}, pretrained_path=DIR) or {BACKBONE_PATH_ENV}=DIR (nothing is "
                         "downloaded; see docs/BACKBONES.md)")
    return dict(
        preset=name, image_size=image_size,
        vlm=VLMConfig(backbone=backbone, image_size=image_size, pretrained_path=pretrained_path, visual_pool=4,
                      max_prompt_tokens=64),
        text_tokenizer=TextTokenizerConfig(pretrained_path=pretrained_path),
        latent_tokenizer=tokenizer_config("base"),
        decoder=FlowDecoderConfig(d_model=512, n_layers=6, n_heads=8))


HF_PRESETS = {   # name -> (backbone, image size S: image tokens = (S / (patch * merge))**2)
    "qwen25vl-3b": ("qwen2_5_vl", 224),     # 14 px patches, 2x2 merge: 8x8 = 64 image tokens
    "qwen3vl-2b": ("qwen3_vl", 224),        # 16 px patches, 2x2 merge: 7x7 = 49
    "smolvlm2-500m": ("smolvlm", 448),      # 16 px patches, pixel shuffle 4: 7x7 = 49 (no tiling)
    "paligemma-3b": ("paligemma", 224),     # 14 px patches: 16x16 = 256
}
TINY_HF_PRESETS = {f"tiny-{b}": b for b in TINY_HF_CONFIGS}

PRESETS = {"tiny": _tiny, "base": _base, "paper": _paper,
           **{n: (lambda b, s, n=n: lambda **kw: _hf_pretrained(n, b, s, **kw))(*v) for n, v in HF_PRESETS.items()},
           **{n: (lambda b: lambda **kw: _hf_tiny(b, **kw))(b) for n, b in TINY_HF_PRESETS.items()}}


def get_config(name: str = "tiny", **overrides) -> SemanticVLAConfig:
    """A preset with overrides.

    Top-level fields override directly (``use_trace=False``, ``horizon=16``); a dict given for a
    sub-config (``vlm={...}``, ``decoder={...}``, ``latent_tokenizer={...}``, ``text_tokenizer={...}``)
    is merged into the preset's sub-config. ``paper`` also takes ``dinov2_path``, ``siglip_path``,
    ``lm_path`` and ``text_tokenizer_path`` (local directories).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    path_keys = ("dinov2_path", "siglip_path", "lm_path", "text_tokenizer_path")
    paths = {k: overrides.pop(k) for k in path_keys if k in overrides}
    if paths and name != "paper":
        raise ValueError(f"{sorted(paths)}: local pretrained paths are options of the 'paper' preset")
    hf_path = overrides.pop("pretrained_path", None)
    if name in HF_PRESETS or name in TINY_HF_PRESETS:
        hf_path = hf_path or (os.environ.get(BACKBONE_PATH_ENV) if name in HF_PRESETS else None)
        if hf_path:
            paths["pretrained_path"] = hf_path
    elif hf_path:
        raise ValueError(f"pretrained_path: an option of the transformers-VLM presets {sorted(HF_PRESETS)}")
    base = SemanticVLAConfig(**PRESETS[name](**paths)).to_dict()
    known = {f.name for f in fields(SemanticVLAConfig)}
    for k, v in overrides.items():
        if k not in known:
            raise ValueError(f"get_config: unknown field {k!r}; known: {sorted(known)}")
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        elif hasattr(v, "__dataclass_fields__"):
            base[k] = asdict(v)
        else:
            base[k] = v
    return SemanticVLAConfig.from_dict(base)
