"""Prompt template, target formatting and the decoding grammar of the VLM.

The VLM reads ``[image tokens] <s> In: What action should the robot take to {instruction}?\\nOut:``
and writes the *target*: the explicit trace as text ``[[x, y], ...]`` (``traces.encode_trace_text``,
N anchors, integers 0..1000) followed by exactly K latent tokens ``<ACT_k>``. With ``use_trace=False``
the target is the K latent tokens alone; with ``use_latent=False`` it is the trace alone.

``TraceGrammar`` is the one place that turns targets into token ids and back. Targets are tokenized
piece by piece (``[[`` / digits / ``, `` / ``], [`` / ``]]``, each piece tokenized on its own, each digit
one token) so that the ids seen in training are exactly the ids the constrained decoder can produce.
The decoder state machine (``GrammarState``) allows, at every step, only tokens that keep the output a
prefix of a valid target: digits (no leading zeros, value <= 1000) or the next structural piece where a
coordinate goes, forced structural tokens, then only ACT tokens, exactly K of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..traces import encode_trace_text, quantize_coords

PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"
OPEN, SEP, MID, CLOSE = "[[", ", ", "], [", "]]"
SEGMENT_PROMPT, SEGMENT_TRACE, SEGMENT_LATENT = 0, 1, 2


def format_prompt(instruction: str, template: str = PROMPT_TEMPLATE) -> str:
    """The prompt text for one instruction (trailing punctuation and case normalized)."""
    instr = " ".join(str(instruction).strip().rstrip(".?!").split())
    if instr and instr[0].isupper() and not instr[:2].isupper():
        instr = instr[0].lower() + instr[1:]
    return template.format(instruction=instr)


def format_target_text(anchors: np.ndarray | None, latent_ids, use_trace: bool = True, use_latent: bool = True) -> str:
    """Human-readable target: trace text then ``<ACT_k>`` tokens (what ``TraceGrammar.decode`` returns)."""
    from .text_tokenizer import act_token

    s = encode_trace_text(anchors) if use_trace else ""
    if use_latent:
        s += "".join(act_token(int(k)) for k in np.asarray(latent_ids).reshape(-1))
    return s


@dataclass
class GrammarState:
    """Decoding state of one sequence (see ``TraceGrammar.allowed`` / ``advance``)."""

    forced: list[int] = field(default_factory=list)   # ids that must come next, in order
    in_trace: bool = False
    anchor: int = 0
    coord: int = 0                                     # 0 = x, 1 = y
    digits: str = ""
    latents: int = 0
    done: bool = False


class TraceGrammar:
    """Target <-> token ids, and the constrained-decoding automaton.

    tokenizer: the VLM tokenizer (with ACT tokens); act_ids: token id of ``<ACT_k>`` for k = 0..C-1;
    num_anchors N, num_latent_tokens K, use_trace / use_latent as in the model config.
    """

    def __init__(self, tokenizer, act_ids: list[int], num_anchors: int, num_latent_tokens: int,
                 use_trace: bool = True, use_latent: bool = True):
        if not (use_trace or use_latent):
            raise ValueError("use_trace and use_latent cannot both be False: the VLM would have nothing to write")
        if num_anchors < 1:
            raise ValueError(f"num_anchors must be >= 1, got {num_anchors}")
        if use_latent and num_latent_tokens < 1:
            raise ValueError(f"num_latent_tokens must be >= 1 when use_latent, got {num_latent_tokens}")
        self.tokenizer = tokenizer
        self.act_ids = list(act_ids)
        self.act_index = {t: k for k, t in enumerate(self.act_ids)}
        self.N, self.K = int(num_anchors), int(num_latent_tokens) if use_latent else 0
        self.use_trace, self.use_latent = use_trace, use_latent
        enc = lambda s: list(tokenizer.encode(s, add_special_tokens=False))  # noqa: E731
        self.piece = {p: enc(p) for p in (OPEN, SEP, MID, CLOSE)}
        self.digit_ids = []
        for d in "0123456789":
            ids = enc(d)
            if len(ids) != 1:
                raise ValueError(f"tokenizer: digit {d!r} is not a single token ({ids}); the trace grammar needs "
                                 "digit-by-digit tokenization")
            self.digit_ids.append(ids[0])
        self.digit_of = {t: d for d, t in enumerate(self.digit_ids)}
        for p, ids in self.piece.items():
            if not ids or ids[0] in self.digit_of:
                raise ValueError(f"tokenizer: structural piece {p!r} tokenizes badly: {ids}")
        probe = np.resize(np.array([[0.123, 1.0], [0.0, 0.5]]), (self.N, 2))
        if self.decode_text(self.encode_target(probe, [0] * self.K)[0])[0] != format_target_text(
                probe, [0] * self.K, use_trace, use_latent):
            raise ValueError("tokenizer: piecewise trace tokens do not decode back to the trace text; "
                             "use a byte-level BPE tokenizer")
        # upper bound on generated length: digits (4 per coordinate) + pieces + latents
        lp = max(len(v) for v in self.piece.values())
        self.max_new_tokens = (self.N * 2 * (4 + lp) + lp if use_trace else 0) + self.K + 1

    # ---- targets ------------------------------------------------------------------------------------
    def encode_target(self, anchors: np.ndarray | None, latent_ids) -> tuple[list[int], list[int]]:
        """Token ids of the target and a segment label per id (SEGMENT_TRACE / SEGMENT_LATENT)."""
        ids: list[int] = []
        seg: list[int] = []
        if self.use_trace:
            q = quantize_coords(np.asarray(anchors, dtype=np.float64).reshape(-1, 2))
            if q.shape[0] != self.N:
                raise ValueError(f"anchors: expected {self.N} anchors, got {q.shape[0]}")
            ids += self.piece[OPEN]
            for a in range(self.N):
                ids += [self.digit_ids[int(c)] for c in str(int(q[a, 0]))]
                ids += self.piece[SEP]
                ids += [self.digit_ids[int(c)] for c in str(int(q[a, 1]))]
                ids += self.piece[CLOSE if a == self.N - 1 else MID]
            seg += [SEGMENT_TRACE] * len(ids)
        if self.use_latent:
            lat = np.asarray(latent_ids, dtype=np.int64).reshape(-1)
            if lat.shape[0] != self.K:
                raise ValueError(f"latent_ids: expected {self.K} ids, got {lat.shape[0]}")
            if lat.min() < 0 or lat.max() >= len(self.act_ids):
                raise ValueError(f"latent_ids: values must be in 0..{len(self.act_ids) - 1}, got {lat.tolist()}")
            ids += [self.act_ids[int(k)] for k in lat]
            seg += [SEGMENT_LATENT] * self.K
        return ids, seg

    def decode_text(self, ids) -> tuple[str, list[int]]:
        """Generated ids -> (text with ``<ACT_k>`` rendered, latent ids in order)."""
        from .text_tokenizer import act_token

        text, lat, buf = "", [], []
        for t in ids:
            t = int(t)
            if t in self.act_index:
                if buf:
                    text += self.tokenizer.decode(buf)
                    buf = []
                text += act_token(self.act_index[t])
                lat.append(self.act_index[t])
            else:
                buf.append(t)
        if buf:
            text += self.tokenizer.decode(buf)
        return text, lat

    # ---- constrained decoding ----------------------------------------------------------------------
    def initial_state(self) -> GrammarState:
        if self.use_trace:
            return GrammarState(forced=list(self.piece[OPEN]), in_trace=True)
        return GrammarState()

    def _digits_allowed(self, cur: str) -> list[int]:
        if cur == "":
            return list(range(10))
        if cur == "0" or len(cur) >= 4:
            return []
        return [d for d in range(10) if int(cur + str(d)) <= 1000]

    def _next_piece(self, st: GrammarState) -> list[int]:
        if st.coord == 0:
            return self.piece[SEP]
        return self.piece[CLOSE if st.anchor == self.N - 1 else MID]

    def allowed(self, st: GrammarState) -> list[int]:
        """Token ids allowed next (empty when done)."""
        if st.done:
            return []
        if st.forced:
            return [st.forced[0]]
        if st.in_trace:
            out = [self.digit_ids[d] for d in self._digits_allowed(st.digits)]
            if st.digits:
                out.append(self._next_piece(st)[0])
            return out
        return list(self.act_ids)

    def advance(self, st: GrammarState, tok: int) -> GrammarState:
        """Consume one token (must be allowed); updates and returns ``st``."""
        tok = int(tok)
        if st.forced:
            if tok != st.forced[0]:
                raise ValueError(f"grammar: token {tok} where {st.forced[0]} was forced")
            st.forced.pop(0)
            if not st.forced and not st.in_trace:
                self._after_trace(st)
            return st
        if st.in_trace:
            if tok in self.digit_of:
                st.digits += str(self.digit_of[tok])
                return st
            piece = self._next_piece(st)
            if tok != piece[0] or not st.digits:
                raise ValueError(f"grammar: token {tok} not allowed inside a coordinate")
            st.forced = list(piece[1:])
            st.digits = ""
            if st.coord == 0:
                st.coord = 1
            else:
                st.coord, st.anchor = 0, st.anchor + 1
                if st.anchor == self.N:
                    st.in_trace = False
                    if not st.forced:
                        self._after_trace(st)
            return st
        if tok not in self.act_index:
            raise ValueError(f"grammar: token {tok} is not an ACT token")
        st.latents += 1
        st.done = st.latents >= self.K
        return st

    def _after_trace(self, st: GrammarState) -> None:
        st.done = self.K == 0
