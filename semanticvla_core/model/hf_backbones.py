"""Pretrained transformers VLMs behind the ``VLMBackbone`` seam: Qwen2.5-VL, Qwen3-VL, SmolVLM / Idefics3,
PaliGemma (``VLMConfig.backbone`` = ``qwen2_5_vl`` | ``qwen3_vl`` | ``smolvlm`` | ``paligemma``).

The whole VLM comes from a local directory (``VLMConfig.pretrained_path``: ``config.json`` + safetensors,
loaded with ``local_files_only=True``; nothing is downloaded), or is built with random weights from
``VLMConfig.hf_config`` (the full HF config dict: tiny test models, and what checkpoints store so that
they rebuild without the original directory). ``SemanticVLM`` keeps doing what it does for every backbone:
it places the image tokens first (``[pads][image tokens][<bos>][prompt][target]``), adds ``<ACT_k>`` to
the tokenizer (the model's own one, ``TextTokenizerConfig.pretrained_path``, which ``SemanticVLAConfig``
sets to the model directory) and resizes the embeddings (``resize_vocab``), takes E_a from the last-layer
hidden states (after the final norm) and pools E_v from ``embed_images``. The adapters do the
model-specific parts:

* image preprocessing in torch from ``(B, 3, S, S)`` in [0, 1]: normalisation with the model's mean / std
  (``VLMConfig.image_mean/std``, else ``preprocessor_config.json`` of the directory, else the family
  default), then the family's vision input. The model's own image placeholder / wrapper tokens
  (``<|vision_start|>``, ``<fake_token_around_image>``, ...) are not written: the image tokens come first.
* Qwen2.5-VL / Qwen3-VL: patchified pixels (the frame repeated ``temporal_patch_size`` times) and
  ``image_grid_thw = (1, S/p, S/p)``; ``(S / (p * merge))**2`` merged image tokens. M-RoPE: the LM takes
  3-D (t, h, w) positions. ``SemanticVLM`` passes 1-D positions (image tokens at 0..P-1), from which the
  adapter computes Qwen's own rule: image token k -> (0, k // g, k % g), a later token at 1-D position
  p -> p - P + g on all three axes (g = image grid side). Decoding with a KV cache uses the same rule.
  Qwen3-VL: the DeepStack features of the vision tower are added to the first LM layers' hidden states
  at the image positions (as the model does), in the prefill / teacher-forced pass that holds the image.
* SmolVLM / Idefics3: one image, no splitting into tiles (the processor's ``do_image_splitting`` would
  add a grid of crops for large inputs; a fixed small robot view is given whole); SigLIP-style position
  buckets accept any ``S`` that is a multiple of ``patch_size * scale_factor``; the pixel-shuffle
  connector gives ``(S / (patch * scale))**2`` tokens.
* PaliGemma: SigLIP features through the projector (position embeddings interpolated when ``S`` is not
  the tower's size); the LM positions are 1-based as PaliGemma's; prefix-LM attention: the image tokens
  attend to each other bidirectionally, everything after them is causal (PaliGemma also makes the prompt
  bidirectional; the backbone does not know where the prompt ends, so here the prompt is causal - a
  small deviation from pretraining that fine-tuning absorbs). Gemma-2 logit soft-capping is applied.

Training hooks: ``lm`` (the decoder-only text model: LoRA targets its ``layers.N.*_proj`` and the
``<ACT_k>`` rows of its ``embed_tokens``; the static-cache CUDA-graph decoder reads its config),
``towers`` (the vision encoder, frozen in stage 2 when weights are pretrained), ``projector``;
``VLMConfig.gradient_checkpointing`` turns on HF gradient checkpointing (active in train mode).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .vlm import HF_BACKBONES, SIGLIP_MEAN, SIGLIP_STD, VLMConfig, _plain_config

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def check_model_dir(path: str, backbone: str) -> Path:
    """``path`` as a local transformers model directory of ``backbone``'s family, or a ValueError that says
    what is wrong (missing, no ``config.json``, another model type)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ValueError(f"VLMConfig.pretrained_path: not a directory: {p} (a local copy of the {backbone} model, "
                         f"e.g. `hf download <repo> --local-dir {p}` on a machine with network access; nothing is "
                         "downloaded here)")
    f = p / "config.json"
    if not f.is_file():
        raise ValueError(f"VLMConfig.pretrained_path: {p} has no config.json: not a transformers model directory")
    model_type = json.loads(f.read_text()).get("model_type")
    accepted = BACKBONE_CLASSES[backbone].model_classes
    if model_type not in accepted:
        raise ValueError(f"VLMConfig.pretrained_path: {p} holds a {model_type!r} model; backbone {backbone!r} "
                         f"takes {sorted(accepted)}")
    return p


def load_hf_vlm(cfg: VLMConfig) -> nn.Module:
    """The ``*ForConditionalGeneration`` of ``cfg``: from ``cfg.pretrained_path`` (local only, float32) or
    random init from ``cfg.hf_config``."""
    import transformers

    model_classes = BACKBONE_CLASSES[cfg.backbone].model_classes

    if cfg.pretrained_path:
        p = check_model_dir(cfg.pretrained_path, cfg.backbone)
        model_type = json.loads((p / "config.json").read_text())["model_type"]
        cls = getattr(transformers, model_classes[model_type])
        return cls.from_pretrained(str(p), local_files_only=True, dtype=torch.float32)
    if not cfg.hf_config:
        raise ValueError(f"VLMConfig.backbone={cfg.backbone!r} needs pretrained_path (a local model directory) "
                         "or hf_config (a full transformers config dict, random init)")
    model_type = cfg.hf_config.get("model_type", next(iter(model_classes)))
    if model_type not in model_classes:
        raise ValueError(f"VLMConfig.hf_config: model_type {model_type!r}; backbone {cfg.backbone!r} takes "
                         f"{sorted(model_classes)}")
    cls = getattr(transformers, model_classes[model_type])
    return cls(cls.config_class.from_dict(dict(cfg.hf_config)))


def _preprocessor_stats(path: str | None) -> tuple[list | None, list | None]:
    """image_mean / image_std of the directory's ``preprocessor_config.json`` (None when absent)."""
    f = Path(path).expanduser() / "preprocessor_config.json" if path else None
    if f is None or not f.is_file():
        return None, None
    d = json.loads(f.read_text())
    return d.get("image_mean"), d.get("image_std")


def image_span(position_ids: torch.Tensor, num_image_tokens: int) -> torch.Tensor:
    """(B, L) bool: where the image tokens are, from ``SemanticVLM``'s 1-D positions (the image holds
    positions 0..P-1, left padding is clamped to 0; P >= 2). All False for a step without the image."""
    P = num_image_tokens
    last = position_ids == P - 1
    end = last.to(torch.int64).argmax(-1, keepdim=True)
    ar = torch.arange(position_ids.shape[-1], device=position_ids.device).view(1, -1)
    return last.any(-1, keepdim=True) & (ar <= end) & (ar > end - P)


class HFVLMBackbone(nn.Module):
    """Shared part of the adapters: loading, normalisation, LM calls, vocabulary, checkpoint config.

    Subclasses set ``model_classes``, ``default_stats`` and the module accessors, and implement
    ``_grid`` (image-token grid side for ``S``) and ``_image_tokens`` (normalised pixels -> tokens)."""

    model_classes: dict[str, str] = {}
    default_stats = (SIGLIP_MEAN, SIGLIP_STD)

    def __init__(self, cfg: VLMConfig, vocab_size: int, tokenizer=None):
        super().__init__()
        self.model = load_hf_vlm(cfg)
        mean, std = _preprocessor_stats(cfg.pretrained_path)
        self.image_mean = list(cfg.image_mean or mean or self.default_stats[0])
        self.image_std = list(cfg.image_std or std or self.default_stats[1])
        self.register_buffer("mean", torch.tensor(self.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.image_std).view(1, 3, 1, 1), persistent=False)
        self.text_config = self.model.config.get_text_config()
        self.hidden_size = int(self.text_config.hidden_size)
        self.image_grid = self._grid(cfg.image_size)
        self.num_image_tokens = self.image_grid ** 2
        if self.num_image_tokens < 2:
            raise ValueError(f"VLMConfig.image_size {cfg.image_size}: {cfg.backbone} gives {self.num_image_tokens} "
                             "image token(s); at least 2 are needed")
        if tokenizer is not None and tokenizer.pad_token_id is not None:
            self.text_config.pad_token_id = tokenizer.pad_token_id
        self.resize_vocab(vocab_size)
        # the LM head shares the input embedding's weight (fixed at construction; see lm_logits)
        self.tied = self.model.lm_head.weight is self.model.get_input_embeddings().weight
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # ---- module accessors (properties: no second registration of the same parameters) -------------
    @property
    def lm(self) -> nn.Module:
        """The decoder-only text model (``embed_tokens``, ``layers``, ``norm``)."""
        return self.model.model.language_model

    @property
    def towers(self) -> list[nn.Module]:
        """The vision encoder(s), without the projector."""
        raise NotImplementedError

    @property
    def projector(self) -> nn.Module:
        raise NotImplementedError

    image_pos = None    # no learned image-position embedding (``apply_lora(vision=True)`` checks it)

    # ---- seam ---------------------------------------------------------------------------------
    def _grid(self, image_size: int) -> int:
        raise NotImplementedError

    def _image_tokens(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _vision_dtype(self) -> torch.dtype:
        return next(self.towers[0].parameters()).dtype

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = ((pixel_values - self.mean) / self.std).to(self._vision_dtype())
        return self._image_tokens(x)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(ids)

    def _lm_inputs(self, inputs_embeds, attention_mask, position_ids, past_key_values) -> dict:
        """Keyword arguments for ``self.lm`` besides the embeddings and the cache (family hook)."""
        return dict(attention_mask=attention_mask, position_ids=position_ids)

    def forward_embeds(self, inputs_embeds, attention_mask, position_ids, past_key_values=None, use_cache=False):
        kw = self._lm_inputs(inputs_embeds, attention_mask, position_ids, past_key_values)
        out = self.lm(inputs_embeds=inputs_embeds, past_key_values=past_key_values, use_cache=use_cache, **kw)
        return out.last_hidden_state, out.past_key_values

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.model.lm_head(hidden)
        # stage-3 LoRA trains the <ACT_k> rows of the LM's input embedding (peft trainable tokens on the text
        # model, which does not see the head). With a tied head those rows are its output rows too: use the
        # trained rows here as well, so that training, serving and the merged model agree.
        adapter = getattr(self.lm.get_input_embeddings(), "token_adapter", None)
        if adapter is not None and self.tied and not adapter.merged:
            for name in adapter.active_adapters:
                idx = torch.as_tensor(adapter.token_indices[name], device=hidden.device)
                rows = F.linear(hidden, adapter.trainable_tokens_delta[name].to(hidden.dtype))
                logits = logits.index_copy(-1, idx, rows.to(logits.dtype))
        return logits

    def resize_vocab(self, n: int) -> None:
        if self.model.get_input_embeddings().weight.shape[0] < n:
            self.model.resize_token_embeddings(n, pad_to_multiple_of=64)

    def language_model_prefix(self) -> str:
        return "model.model.language_model"

    def resolved_config(self, cfg: VLMConfig) -> VLMConfig:
        """``cfg`` with the full HF config (vocabulary resized), the resolved normalisation and no path."""
        out = copy.deepcopy(cfg)
        out.hf_config = _plain_config(self.model.config)
        out.pretrained_path = None
        out.image_mean, out.image_std = list(self.image_mean), list(self.image_std)
        return out


# ---------------------------------------------------------------------------------------------------
# Qwen2.5-VL / Qwen3-VL
# ---------------------------------------------------------------------------------------------------
class Qwen2_5_VLBackbone(HFVLMBackbone):
    """``Qwen2_5_VLForConditionalGeneration``: patchified pixels + ``image_grid_thw``, M-RoPE positions."""

    model_classes = {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}
    default_stats = (CLIP_MEAN, CLIP_STD)
    vision_lora_targets = r".*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(gate|up|down)_proj|mlp\.linear_fc[12])"

    @property
    def towers(self) -> list[nn.Module]:
        return [self.model.model.visual]

    @property
    def projector(self) -> nn.Module:
        return self.model.model.visual.merger

    def _grid(self, image_size: int) -> int:
        vc = self.model.config.vision_config
        unit = vc.patch_size * vc.spatial_merge_size
        if image_size % unit:
            raise ValueError(f"VLMConfig.image_size {image_size} is not a multiple of patch_size x spatial_merge_size "
                             f"= {unit} ({self.model.config.model_type})")
        return image_size // unit

    def _patchify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) -> (B * gh * gw, 3 * T * p * p) flattened patches in the image processor's order
        (merge windows contiguous) and ``image_grid_thw`` (B, 3)."""
        vc = self.model.config.vision_config
        p, m, T = vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size
        B, C, S, _ = x.shape
        g = S // p
        x = x.unsqueeze(1).expand(B, T, C, S, S).reshape(B, T, C, g // m, m, p, g // m, m, p)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(B * g * g, C * T * p * p)
        thw = torch.tensor([[1, g, g]], dtype=torch.long, device=x.device).expand(B, 3)
        return x, thw

    def _vision(self, x: torch.Tensor):
        pix, thw = self._patchify(x)
        return self.model.model.get_image_features(pixel_values=pix, image_grid_thw=thw)

    def _image_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(list(self._vision(x).pooler_output))

    def mrope_positions(self, position_ids: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """1-D positions (B, L) -> Qwen's (3, B, L) (t, h, w) positions (module docstring)."""
        P, g = self.num_image_tokens, self.image_grid
        text = (position_ids - P + g).clamp(min=0)
        return torch.stack([torch.where(image, 0, text), torch.where(image, position_ids // g, text),
                            torch.where(image, position_ids % g, text)])

    def _lm_inputs(self, inputs_embeds, attention_mask, position_ids, past_key_values) -> dict:
        image = image_span(position_ids, self.num_image_tokens)
        return dict(attention_mask=attention_mask, position_ids=self.mrope_positions(position_ids, image))


class Qwen3VLBackbone(Qwen2_5_VLBackbone):
    """``Qwen3VLForConditionalGeneration``: as Qwen2.5-VL, plus DeepStack visual features added to the
    first LM layers at the image positions (kept from ``embed_images`` for the pass that holds the image)."""

    model_classes = {"qwen3_vl": "Qwen3VLForConditionalGeneration"}
    default_stats = (SIGLIP_MEAN, SIGLIP_STD)

    def __init__(self, cfg: VLMConfig, vocab_size: int, tokenizer=None):
        super().__init__(cfg, vocab_size, tokenizer)
        self.__dict__["_deepstack"] = None

    def _image_tokens(self, x: torch.Tensor) -> torch.Tensor:
        out = self._vision(x)
        # per DeepStack layer: (B * P, d) in batch order, as hidden_states[visual_pos_masks] selects them
        self.__dict__["_deepstack"] = [torch.cat(list(f)) for f in out.deepstack_features]
        return torch.stack(list(out.pooler_output))

    def _lm_inputs(self, inputs_embeds, attention_mask, position_ids, past_key_values) -> dict:
        image = image_span(position_ids, self.num_image_tokens)
        kw = dict(attention_mask=attention_mask, position_ids=self.mrope_positions(position_ids, image))
        n = int(image.sum()) if position_ids.shape[-1] > 1 else 0   # no host sync in a (CUDA-graph) decode step
        if n:
            ds = self.__dict__["_deepstack"]
            if ds is None or ds[0].shape[0] != n:
                raise ValueError(f"qwen3_vl: {n} image positions in this pass but the last embed_images gave "
                                 f"{None if ds is None else ds[0].shape[0]} DeepStack rows; call embed_images for "
                                 "the same batch right before the pass that holds the image tokens")
            kw.update(visual_pos_masks=image, deepstack_visual_embeds=ds)
            self.__dict__["_deepstack"] = None
        return kw


# ---------------------------------------------------------------------------------------------------
# SmolVLM / Idefics3
# ---------------------------------------------------------------------------------------------------
class SmolVLMBackbone(HFVLMBackbone):
    """``SmolVLMForConditionalGeneration`` / ``Idefics3ForConditionalGeneration``: one whole image (no
    tiling), SigLIP-style encoder, pixel-shuffle connector, Llama-style text model."""

    model_classes = {"smolvlm": "SmolVLMForConditionalGeneration",
                     "idefics3": "Idefics3ForConditionalGeneration"}

    @property
    def lm(self) -> nn.Module:
        return self.model.model.text_model

    @property
    def towers(self) -> list[nn.Module]:
        return [self.model.model.vision_model]

    @property
    def projector(self) -> nn.Module:
        return self.model.model.connector

    def _grid(self, image_size: int) -> int:
        unit = self.model.config.vision_config.patch_size * self.model.config.scale_factor
        if image_size % unit:
            raise ValueError(f"VLMConfig.image_size {image_size} is not a multiple of patch_size x scale_factor "
                             f"= {unit} ({self.model.config.model_type})")
        if image_size > self.model.config.vision_config.image_size:
            raise ValueError(f"VLMConfig.image_size {image_size} exceeds the vision encoder's "
                             f"{self.model.config.vision_config.image_size} (images are not split into tiles)")
        return image_size // unit

    def _image_tokens(self, x: torch.Tensor) -> torch.Tensor:
        # the encoder directly, not get_image_features: that drops all-zero (after normalisation) images
        h = self.model.model.vision_model(pixel_values=x).last_hidden_state
        return self.model.model.connector(h)

    def language_model_prefix(self) -> str:
        return "model.model.text_model"


# ---------------------------------------------------------------------------------------------------
# PaliGemma
# ---------------------------------------------------------------------------------------------------
class PaliGemmaBackbone(HFVLMBackbone):
    """``PaliGemmaForConditionalGeneration``: SigLIP + projector, Gemma LM with 1-based positions and
    bidirectional attention inside the image block (module docstring)."""

    model_classes = {"paligemma": "PaliGemmaForConditionalGeneration"}

    @property
    def towers(self) -> list[nn.Module]:
        return [self.model.model.vision_tower]

    @property
    def projector(self) -> nn.Module:
        return self.model.model.multi_modal_projector

    def _grid(self, image_size: int) -> int:
        ps = self.model.config.vision_config.patch_size
        if image_size % ps:
            raise ValueError(f"VLMConfig.image_size {image_size} is not a multiple of the SigLIP patch size {ps}")
        return image_size // ps

    def _image_tokens(self, x: torch.Tensor) -> torch.Tensor:
        interpolate = x.shape[-1] != self.model.config.vision_config.image_size
        out = self.model.model.get_image_features(x, interpolate_pos_encoding=interpolate)
        return out.pooler_output

    def _lm_inputs(self, inputs_embeds, attention_mask, position_ids, past_key_values) -> dict:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        pos = position_ids + 1                      # PaliGemma's positions are 1-based
        image = image_span(position_ids, self.num_image_tokens)
        if position_ids.shape[-1] == 1 or not bool(image.any()):   # decode steps (no host sync): causal is exact
            return dict(attention_mask=attention_mask, position_ids=pos)
        if attention_mask.ndim == 4:   # the static-cache (CUDA graph) prefill: a boolean (B, 1, L, max_len) mask
            block = image[:, None, :, None] & image[:, None, None, :]
            mask = attention_mask.clone()
            mask[..., :image.shape[1]] |= block
            return dict(attention_mask=mask, position_ids=pos)
        kw = dict(config=self.text_config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                  past_key_values=past_key_values, position_ids=pos,
                  block_sequence_ids=torch.where(image, 0, -1))
        mask = create_causal_mask(**kw)
        if getattr(self.text_config, "sliding_window", None) is not None:
            mask = {"full_attention": mask, "sliding_attention": create_sliding_window_causal_mask(**kw)}
        return dict(attention_mask=mask, position_ids=pos)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().lm_logits(hidden)
        cap = getattr(self.text_config, "final_logit_softcapping", None)
        return logits if cap is None else torch.tanh(logits / cap) * cap


BACKBONE_CLASSES: dict[str, type[HFVLMBackbone]] = {
    "qwen2_5_vl": Qwen2_5_VLBackbone, "qwen3_vl": Qwen3VLBackbone, "smolvlm": SmolVLMBackbone,
    "paligemma": PaliGemmaBackbone}
assert set(BACKBONE_CLASSES) == set(HF_BACKBONES)


def build_hf_backbone(cfg: VLMConfig, vocab_size: int, tokenizer=None) -> HFVLMBackbone:
    return BACKBONE_CLASSES[cfg.backbone](cfg, vocab_size, tokenizer)

