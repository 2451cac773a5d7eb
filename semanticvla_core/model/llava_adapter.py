"""An off-the-shelf transformers VLM (``LlavaForConditionalGeneration``) behind the ``VLMBackbone`` seam.

Proves that ``SemanticVLM`` (losses, constrained generation, E_a / E_v) does not depend on the
Prismatic composite: LLaVA's own vision tower + multi-modal projector embed the image, its language
model runs on ``inputs_embeds`` with a KV cache, its ``lm_head`` gives the logits. The image tokens are
placed by ``SemanticVLM`` (no ``<image>`` placeholder merging), with the first vision tower of the
``VLMConfig`` as LLaVA's tower (SigLIP: all patch tokens; DINOv2: CLS dropped) and the LM from
``lm_type``/``lm_config``. A local pretrained LLaVA is not wired here (random init from configs only).
"""
from __future__ import annotations

import torch
from torch import nn

from .vlm import IMAGENET_MEAN, IMAGENET_STD, SIGLIP_MEAN, SIGLIP_STD, VLMConfig, _round_up


class LlavaBackbone(nn.Module):
    """``VLMBackbone`` over ``transformers.LlavaForConditionalGeneration``."""

    def __init__(self, cfg: VLMConfig, vocab_size: int, tokenizer=None):
        super().__init__()
        from transformers import (Dinov2Config, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, Qwen2Config,
                                  SiglipVisionConfig)

        if cfg.lm_pretrained_path or any(v.pretrained_path for v in cfg.vision):
            raise ValueError("VLMConfig.backbone='llava': pretrained paths are not supported by the adapter")
        tc = cfg.vision[0]
        if tc.kind == "siglip":
            vc = SiglipVisionConfig.from_dict({"vision_use_head": False, **tc.config, "image_size": cfg.image_size})
            strategy, mean, std = "full", SIGLIP_MEAN, SIGLIP_STD
        else:
            vc = Dinov2Config.from_dict({**tc.config, "image_size": cfg.image_size})
            strategy, mean, std = "default", IMAGENET_MEAN, IMAGENET_STD
        if cfg.image_size % vc.patch_size:
            raise ValueError(f"VLMConfig.image_size {cfg.image_size} is not a multiple of patch size {vc.patch_size}")
        tkw = dict(cfg.lm_config)
        tkw["vocab_size"] = max(int(tkw.get("vocab_size") or 0), _round_up(vocab_size))
        if tokenizer is not None:
            tkw.setdefault("pad_token_id", tokenizer.pad_token_id)
        text_cfg = (Qwen2Config if cfg.lm_type == "qwen2" else LlamaConfig).from_dict(tkw)
        lcfg = LlavaConfig(vision_config=vc, text_config=text_cfg, image_token_id=0,
                           vision_feature_layer=tc.feature_layer, vision_feature_select_strategy=strategy,
                           projector_hidden_act="gelu", tie_word_embeddings=bool(tkw.get("tie_word_embeddings", False)))
        self.llava = LlavaForConditionalGeneration(lcfg)
        self.strategy, self.feature_layer = strategy, tc.feature_layer
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.image_grid = cfg.image_size // vc.patch_size
        self.num_image_tokens = self.image_grid ** 2
        self.hidden_size = int(text_cfg.hidden_size)

    def resolved_config(self, cfg: VLMConfig) -> VLMConfig:
        """``cfg`` with LLaVA's full part configs (see ``PrismaticBackbone.resolved_config``)."""
        import copy

        from .vlm import _plain_config

        out = copy.deepcopy(cfg)
        out.vision[0].config = _plain_config(self.llava.config.vision_config)
        out.lm_config = _plain_config(self.llava.config.text_config)
        return out

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = ((pixel_values - self.mean) / self.std).to(self.llava.model.multi_modal_projector.linear_1.weight.dtype)
        out = self.llava.model.get_image_features(pixel_values=x, vision_feature_layer=self.feature_layer,
                                                  vision_feature_select_strategy=self.strategy)
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        if isinstance(feats, (list, tuple)):
            feats = torch.stack(list(feats))
        return feats

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llava.get_input_embeddings()(ids)

    def forward_embeds(self, inputs_embeds, attention_mask, position_ids, past_key_values=None, use_cache=False):
        out = self.llava.model.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                              position_ids=position_ids, past_key_values=past_key_values,
                                              use_cache=use_cache)
        return out.last_hidden_state, out.past_key_values

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.llava.lm_head(hidden)

    def resize_vocab(self, n: int) -> None:
        if self.llava.get_input_embeddings().weight.shape[0] < n:
            self.llava.resize_token_embeddings(n, pad_to_multiple_of=64)

    def language_model_prefix(self) -> str:
        return "llava.model.language_model"
