"""Shared helpers for the VLM / policy / stage 2-3 tests (not a conftest: imported explicitly)."""
from __future__ import annotations

import functools

import torch

from semanticvla_core.model.config import SemanticVLAConfig, get_config
from semanticvla_core.model.text_tokenizer import TextTokenizerConfig, add_act_tokens, build_text_tokenizer
from semanticvla_core.model.vlm import SemanticVLM, VLMConfig

CODEBOOK = 32


@functools.lru_cache(maxsize=4)
def _tokenizer_files(seed: int = 0) -> str:
    import tempfile

    tok = build_text_tokenizer(TextTokenizerConfig(seed=seed), CODEBOOK)
    d = tempfile.mkdtemp(prefix="svla_tok_")
    tok.save_pretrained(d)
    return d


def text_tokenizer(seed: int = 0):
    """The tiny preset's trained BPE tokenizer with <ACT_0..31> (trained once per session, reloaded)."""
    from semanticvla_core.model.text_tokenizer import load_text_tokenizer

    return load_text_tokenizer(_tokenizer_files(seed), CODEBOOK)


def tiny_vlm(seed: int = 0, num_anchors: int = 4, num_latent_tokens: int = 4, use_trace: bool = True,
             use_latent: bool = True, **vlm_overrides) -> SemanticVLM:
    """A randomly initialised tiny VLM (the ``tiny`` preset's backbone)."""
    torch.manual_seed(seed)
    tok = text_tokenizer()
    acts = add_act_tokens(tok, CODEBOOK)
    base = get_config("tiny").vlm.to_dict()
    base.update(vlm_overrides)
    return SemanticVLM(VLMConfig.from_dict(base), tok, acts, num_anchors, num_latent_tokens, use_trace,
                       use_latent).eval()


def tiny_config(**overrides) -> SemanticVLAConfig:
    return get_config("tiny", **overrides)


def batch_inputs(n: int = 3, size: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand((n, 3, size, size), generator=g)
    instr = ["pick up the red block", "push the blue cube to the left of the bowl", "open the drawer",
             "stack the green cup on the plate", "wipe"][:n]
    anchors = torch.rand((n, 4, 2), generator=g)
    lat = torch.randint(0, CODEBOOK, (n, 4), generator=g)
    return imgs, instr, anchors, lat
