"""The VLM's text tokenizer, built offline.

Two sources:

* ``build_text_tokenizer(TextTokenizerConfig(...))`` trains a byte-level BPE with ``tokenizers`` on a
  corpus this module generates (robot-instruction vocabulary, the prompt template, trace texts and
  digits). A ``Digits(individual_digits=True)`` pre-tokenizer keeps coordinates digit by digit, so the
  constrained decoder (``prompts.TraceGrammar``) can write any integer 0..1000. Deterministic: the
  same config always gives the same vocabulary. Used by the ``tiny``/``base`` presets.
* ``TextTokenizerConfig(pretrained_path=DIR)`` loads a local pretrained tokenizer directory (the
  ``paper`` preset: the LM's own tokenizer). Nothing is downloaded.

Either way ``<ACT_0..C-1>`` (C = latent codebook size) are added as special tokens, each one id.
The result is a ``PreTrainedTokenizerFast`` that checkpoints save with ``save_pretrained``.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

ACT_TOKEN_FORMAT = "<ACT_{}>"
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"


@dataclass
class TextTokenizerConfig:
    """How to obtain the text tokenizer.

    pretrained_path: local directory of a pretrained tokenizer (None = train the BPE here).
    vocab_size: BPE vocabulary size before the ACT tokens (trained tokenizer only).
    corpus_lines: number of generated corpus lines the BPE is trained on.
    seed: corpus generator seed (the vocabulary is a pure function of this config).
    """

    pretrained_path: str | None = None
    vocab_size: int = 1024
    corpus_lines: int = 20000
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TextTokenizerConfig":
        return cls(**d)


# --- the generated corpus -------------------------------------------------------------------------
_VERBS = ["pick up", "put", "place", "push", "move", "lift", "grasp", "slide", "stack", "open", "close",
          "turn on", "turn off", "press", "pull", "drop", "reach", "rotate", "pour", "wipe", "insert", "flip",
          "take", "bring", "hand over", "knock over", "sort", "align", "touch", "point at", "go to"]
_COLORS = ["red", "green", "blue", "yellow", "orange", "purple", "black", "white", "pink", "brown", "grey"]
_OBJECTS = ["block", "cube", "cup", "mug", "bowl", "plate", "bottle", "can", "box", "sponge", "spoon", "fork",
            "knife", "towel", "ball", "drawer", "door", "lid", "pot", "pan", "basket", "tray", "book", "marker",
            "cloth", "apple", "banana", "lemon", "carrot", "toy", "button", "handle", "faucet", "microwave",
            "oven", "stove", "shelf", "cabinet", "table", "sink", "bin", "target", "object", "peg", "hole"]
_PLACES = ["on the", "in the", "into the", "onto the", "next to the", "behind the", "in front of the",
           "to the left of the", "to the right of the", "on top of the", "inside the", "under the", "near the",
           "away from the", "towards the", "off the", "out of the"]
_EXTRA = ["the", "a", "an", "and", "then", "it", "up", "down", "left", "right", "forward", "back", "slowly",
          "carefully", "gently", "small", "large", "big", "tall", "short", "top", "bottom", "middle", "corner",
          "side", "edge", "center", "first", "second", "other", "both", "all", "robot", "gripper", "arm", "hand"]


def generate_corpus(num_lines: int, seed: int = 0) -> list[str]:
    """Deterministic lines of prompts, instructions and trace texts (what the VLM will read and write)."""
    from .prompts import format_prompt  # local import: prompts imports nothing from here at module level
    from ..traces import encode_trace_text

    rng = random.Random(seed)
    lines: list[str] = []
    for i in range(num_lines):
        obj = f"{rng.choice(_COLORS)} {rng.choice(_OBJECTS)}" if rng.random() < 0.7 else rng.choice(_OBJECTS)
        instr = f"{rng.choice(_VERBS)} the {obj}"
        if rng.random() < 0.5:
            instr += f" {rng.choice(_PLACES)} {rng.choice(_COLORS + [''])} {rng.choice(_OBJECTS)}".replace("  ", " ")
        if rng.random() < 0.2:
            instr += " " + " ".join(rng.choice(_EXTRA) for _ in range(rng.randint(1, 4)))
        kind = i % 4
        if kind == 0:
            lines.append(format_prompt(instr))
        elif kind == 1:
            n = rng.randint(1, 6)
            pts = [[rng.random(), rng.random()] for _ in range(n)]
            import numpy as np

            lines.append(encode_trace_text(np.array(pts)))
        elif kind == 2:
            lines.append(instr.capitalize() + ".")
        else:
            lines.append(" ".join(str(rng.randint(0, 1000)) for _ in range(rng.randint(1, 8))))
    return lines


def _train_bpe(cfg: TextTokenizerConfig) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, special_tokens=[PAD, BOS, EOS, UNK], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(generate_corpus(cfg.corpus_lines, cfg.seed), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, clean_up_tokenization_spaces=False)


def act_token(k: int) -> str:
    return ACT_TOKEN_FORMAT.format(k)


def add_act_tokens(tok: PreTrainedTokenizerBase, codebook_size: int) -> list[int]:
    """Add ``<ACT_0..codebook_size-1>`` as special tokens (idempotent); returns their ids in order."""
    names = [act_token(k) for k in range(codebook_size)]
    missing = [n for n in names if n not in tok.get_vocab()]
    if missing:
        tok.add_tokens(missing, special_tokens=True)
    ids = tok.convert_tokens_to_ids(names)
    if len(set(ids)) != codebook_size or any(i is None or i == tok.unk_token_id for i in ids):
        raise ValueError("tokenizer: <ACT_k> tokens did not get distinct ids")
    return list(ids)


def build_text_tokenizer(cfg: TextTokenizerConfig, codebook_size: int) -> PreTrainedTokenizerFast:
    """Train (or load from ``cfg.pretrained_path``) the tokenizer and add the ACT tokens."""
    if cfg.pretrained_path:
        p = Path(cfg.pretrained_path)
        if not p.is_dir():
            raise ValueError(f"text tokenizer pretrained_path: not a directory: {p}")
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    else:
        tok = _train_bpe(cfg)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    add_act_tokens(tok, codebook_size)
    return tok


def load_text_tokenizer(path: str | Path, codebook_size: int) -> PreTrainedTokenizerBase:
    """Load a tokenizer saved with a checkpoint and check that it carries all ACT tokens."""
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"text tokenizer: directory not found: {p}")
    tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    vocab = tok.get_vocab()
    missing = [act_token(k) for k in range(codebook_size) if act_token(k) not in vocab]
    if missing:
        raise ValueError(f"text tokenizer at {p}: missing {len(missing)} ACT tokens (e.g. {missing[0]}); "
                         f"codebook size {codebook_size} does not match this tokenizer")
    return tok
