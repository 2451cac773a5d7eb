"""``SemanticVLAPolicy``: the deployable model (VLM planner + frozen trace encoder + flow decoder).

Checkpoint directory (``save_pretrained`` / ``from_pretrained``; nothing pickled)::

    config.json            {"model_type": "semanticvla_policy", "config": SemanticVLAConfig (resolved:
                            full part configs, no pretrained paths), "decoder_config": ...,
                            "codebook_version": latent tokenizer version the VLM was trained against}
    model.safetensors      VLM (backbone incl. vision towers) + flow decoder, LoRA merged
    tokenizer/             the text tokenizer (HF files, with <ACT_k>)
    latent_tokenizer/      the frozen latent tokenizer, encoder only (its own config.json + safetensors)
    norm_stats.json        ``normalize.DatasetStats`` (action / state), optional

Serving (all batched, CPU float32 or GPU bf16 via ``device`` / ``dtype``):

* ``plan(images, instruction, state=None) -> Plan``: trace anchors, latent ids, generated text, parse
  flags, the action chunk in robot units (``norm_stats`` unnormalized), E_a, pooled E_v, timings.
* Split for the ROS nodes (the controller never re-runs the VLM): ``plan_trace(...) -> TracePlan``
  and ``decode_actions(trace_plan, state) -> ActionChunkData``. e_tau is recomputed from the
  TracePlan's anchors through the frozen trace encoder (anchors resampled to W points), exactly as
  ``plan`` does, so both paths give identical actions for the same seed.

The four comparison variants (``SemanticVLAConfig``): full; ``use_trace=False`` (latents only);
``use_latent=False`` (trace only, no E_a); both off (conventional VLA: nothing generated, E_a = the
final K prompt states). ``decode_actions`` works for all four. Without a trace, ``TracePlan.anchors``
is the image centre ``[[0.5, 0.5]]`` (``validate`` needs >= 1 anchor); in the conventional variant
``raw_text`` is ``""``, ``parse_ok`` True, ``latent_ids`` empty and, since ``TracePlan.validate``
ties the rows of ``latent_hidden`` to the latent ids, the K prompt-state rows of E_a travel appended
to ``visual_features`` ((M + K, d): M pooled E_v rows, then the K E_a rows; ``latent_hidden`` is
(0, d)). ``make_trace_plan`` is the one place that packs, ``decode_actions`` unpacks.

Flow-sampling noise is drawn from ``torch.Generator().manual_seed(seed)`` (default seed 0), one
(H, D) draw shared by every row, times ``config.noise_scale`` (0: every chunk starts from the noise's mean),
so a plan is a deterministic function of the inputs and the seed.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

from .interfaces import ActionChunkData, TracePlan
from .model.config import SemanticVLAConfig
from .model.flow_decoder import FlowMatchingDecoder, rtc_weights

RTC_METHOD = "replace"    # real-time chunking: "replace" (inpainting by replacement: as successful as guidance in the
                          # harness at 1/4 of its decode time, BENCHMARKS.md) | "guidance" (Black et al. 2025)
from .model.latent_tokenizer import LatentTokenizer
from .model.text_tokenizer import add_act_tokens, build_text_tokenizer, load_text_tokenizer
from .model.visual_stem import VisualStem
from .model.vlm import SemanticVLM
from .robot_state import STATE_DIM, deltas_to_tcp_targets, tcp_targets_to_deltas
from .traces import resample_trace

MODEL_TYPE = "semanticvla_policy"
CONFIG_NAME, WEIGHTS_NAME, NORM_STATS_NAME = "config.json", "model.safetensors", "norm_stats.json"
TOKENIZER_DIR, LATENT_TOKENIZER_DIR = "tokenizer", "latent_tokenizer"
# switches that may be changed when loading a checkpoint (they leave the VLM's weights valid; the
# decoder is rebuilt if its inputs change): how variant (3) reuses the full policy's stage 2
DECODER_SIDE_SWITCHES = ("use_latent", "trace_to_decoder", "stem", "decoder", "action_frame", "noise_scale")
LORA_TARGETS = r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
# vision towers (DINOv2: attention.q/k/v/o_proj (older transformers: attention.attention.query/key/value,
# attention.output.dense), mlp.fc1/2; SigLIP: self_attn.q/k/v/out_proj, mlp.fc1/2)
VISION_LORA_TARGETS = r".*layers?\.\d+\..*(query|key|value|attention\.output\.dense|(q|k|v|o|out)_proj|mlp\.fc[12])"


@dataclass
class Plan:
    """Result of ``SemanticVLAPolicy.plan`` for a batch of B observations."""

    anchors: np.ndarray               # (B, N, 2) float32 normalized image coordinates
    latent_ids: np.ndarray            # (B, K) int64 <ACT_k> indices ((B, 0) without use_latent)
    texts: list[str]                  # generated text (trace + <ACT_k> rendered; "" when nothing is generated)
    parse_ok: list[bool]              # the trace parsed cleanly and exactly K latents were emitted
    actions: np.ndarray               # (B, H, D) float32 ee_delta actions in robot units (unnormalized)
    actions_normalized: np.ndarray    # (B, H, D) what the decoder produced (rows in config.action_frame)
    latent_hidden: np.ndarray         # E_a (B, K, d) float32 (ACT-token or prompt states; K = 0: none)
    visual_features: np.ndarray       # pooled E_v (B, M, d) float32
    instructions: list[str]
    timings: dict[str, float] = field(default_factory=dict)  # seconds: vision, prefill, decode,
    #   decode_per_token, latent_hidden, flow, total (for the whole batch)
    image_size: tuple[int, int] = (0, 0)   # (width, height) of the images the anchors refer to
    keypoints: np.ndarray | None = None    # (B, 2, 2) where the stem's language keypoints put the named object
    #   and its destination (normalized agent-view coordinates); None without stem lang_keypoints >= 2

    def trace_plan(self, b: int = 0, plan_id: int = 0) -> TracePlan:
        """Row ``b`` as the ROS-facing ``TracePlan``."""
        return make_trace_plan(self.anchors[b], self.latent_ids[b], self.latent_hidden[b], self.visual_features[b],
                               image_size=self.image_size, instruction=self.instructions[b], raw_text=self.texts[b],
                               parse_ok=bool(self.parse_ok[b]), plan_id=plan_id,
                               planning_latency_s=float(self.timings.get("total", 0.0)))


def make_trace_plan(anchors, latent_ids, latent_hidden, visual_features, image_size: tuple[int, int],
                    instruction: str, raw_text: str, parse_ok: bool, plan_id: int = 0,
                    planning_latency_s: float = 0.0) -> TracePlan:
    """One row of a plan as a validated ``TracePlan``. E_a rows without latent ids (the conventional
    variant's prompt states) are appended to ``visual_features`` (module docstring)."""
    lat = np.asarray(latent_ids).reshape(-1).astype(np.int32)
    e_a = np.asarray(latent_hidden, np.float32)
    e_v = np.asarray(visual_features, np.float32)
    if lat.size == 0 and e_a.shape[0] > 0:
        e_v, e_a = np.concatenate([e_v, e_a], 0), e_a[:0]
    return TracePlan(anchors=np.asarray(anchors, np.float32), latent_ids=lat, latent_hidden=e_a, visual_features=e_v,
                     image_width=int(image_size[0]), image_height=int(image_size[1]), instruction=instruction,
                     raw_text=raw_text, parse_ok=parse_ok, plan_id=plan_id,
                     planning_latency_s=planning_latency_s).validate()


def preprocess_images(images, size: int, device=None) -> torch.Tensor:
    """The one image conversion of the policy: -> (B, 3, size, size) float32 in [0, 1].

    Accepts a uint8 (H, W, 3) / (B, H, W, 3) array, a list of (H, W, 3) uint8 arrays, or a float
    tensor (3, S, S) / (B, 3, S, S) in [0, 1]. Other sizes are resized (bilinear, antialiased).
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images: empty list")
        return torch.cat([preprocess_images(im, size, device) for im in images], 0)
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images: expected uint8 (H, W, 3) or (B, H, W, 3), got {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"images: numpy images must be uint8 HxWx3, got {images.dtype}")
        if images.shape[1:3] != (size, size):
            # the same resize the training data went through (data pipelines): OpenCV INTER_AREA when shrinking
            from .image_convert import resize_rgb
            images = np.stack([resize_rgb(im, size) for im in images])
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    elif isinstance(images, torch.Tensor):
        x = images
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"images: expected a (B, 3, H, W) tensor in [0, 1], got {tuple(x.shape)}")
        x = x.float()
    else:
        raise ValueError(f"images: unsupported type {type(images).__name__}")
    if not torch.isfinite(x).all():
        raise ValueError("images: non-finite pixel values")
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return x.to(device) if device is not None else x


class SemanticVLAPolicy(nn.Module):
    """VLM (trace + latent tokens) -> frozen trace encoder (e_tau) -> flow decoder -> action chunk."""

    def __init__(self, config: SemanticVLAConfig, text_tokenizer=None, latent_tokenizer: LatentTokenizer | None = None,
                 norm_stats=None, codebook_version: str | None = None):
        super().__init__()
        self.config = config = copy.deepcopy(config)
        self.rtc_method = RTC_METHOD        # how a chunk continues the running one (rtc_prefix); inference only
        if latent_tokenizer is not None:
            lc = latent_tokenizer.config
            for name in ("num_latent_tokens", "latent_codebook_size", "window", "trace_code_dim"):
                if getattr(lc, name) != getattr(config.latent_tokenizer, name):
                    raise ValueError(f"latent tokenizer {name}={getattr(lc, name)} does not match the policy config "
                                     f"({getattr(config.latent_tokenizer, name)})")
            config.latent_tokenizer = copy.deepcopy(lc)
            if latent_tokenizer.with_decoders:
                latent_tokenizer.drop_decoders()
        else:
            latent_tokenizer = LatentTokenizer(config.latent_tokenizer, with_decoders=False)
        self.latent_tokenizer = latent_tokenizer.eval().requires_grad_(False)
        tok = text_tokenizer if text_tokenizer is not None else build_text_tokenizer(config.text_tokenizer,
                                                                                    config.codebook_size)
        act_ids = add_act_tokens(tok, config.codebook_size)
        self.text_tokenizer = tok
        self.vlm = SemanticVLM(config.vlm, tok, act_ids, config.num_anchors, config.num_latent_tokens,
                               config.use_trace, config.use_latent)
        self.decoder = FlowMatchingDecoder(config.decoder_config(self.vlm.hidden_size))
        self.stem = VisualStem(config.stem, self.vlm.hidden_size) if config.stem.enabled else None
        self.norm_stats = norm_stats
        self.codebook_version = codebook_version or self.latent_tokenizer.codebook_version
        self._peft = None
        self._peft_vision: list = []

    # ---- modes -----------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.latent_tokenizer.eval()          # always frozen
        return self

    @property
    def device(self) -> torch.device:
        return self.decoder.pos.device

    @property
    def vlm_dtype(self) -> torch.dtype:
        return next(self.vlm.parameters()).dtype

    def to_runtime(self, device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32,
                   cuda_graph: bool = False):
        """Move to ``device``; the VLM in ``dtype`` (bf16 on GPU), decoder and trace encoder in float32.
        ``cuda_graph``: on CUDA, decode with a static KV cache and a replayed CUDA graph per token."""
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.to(device)
        self.vlm.to(dtype=dtype)
        self.vlm.cuda_graph = bool(cuda_graph)
        return self

    # ---- shared pieces ---------------------------------------------------------------------------
    def anchors_to_e_tau(self, anchors) -> torch.Tensor:
        """(B, N, 2) anchors -> resampled to W points -> frozen trace encoder -> e_tau (B, T_c, d_tau)."""
        a = anchors.detach().float().cpu().numpy() if isinstance(anchors, torch.Tensor) else np.asarray(anchors)
        window = torch.from_numpy(resample_trace(a.astype(np.float32), self.config.window)).to(self.device)
        with torch.no_grad():
            return self.latent_tokenizer.encode_trace(window).float()

    def decoder_conditions(self, anchors, e_a: torch.Tensor | None, e_v: torch.Tensor, state=None,
                           image_age=None) -> dict:
        """The decoder's condition groups, with the switches applied (absent groups are None), and ``image_age``
        (None unless the decoder has ``image_age_cond``): the keyword arguments of the decoder's ``loss`` /
        ``sample`` / ``forward`` (``build_memory`` takes the groups only). ``image_age``: control steps by which the
        images are older than ``state`` (a number or (B,); None: 0)."""
        c = self.config
        return dict(e_tau=self.anchors_to_e_tau(anchors) if c.decoder_uses_trace else None,
                    e_a=e_a.float() if (c.decoder_uses_e_a and e_a is not None) else None,
                    e_v=e_v.float(),
                    state=state.float() if (c.state_dim > 0 and state is not None) else None,
                    image_age=image_age if self.decoder.config.image_age_cond else None)

    @property
    def uses_wrist(self) -> bool:
        """True when plan / plan_trace need ``wrist=`` images (the decoder's stem looks at the wrist camera)."""
        return self.stem is not None and self.config.stem.wrist_size > 0

    @property
    def num_decoder_visual_tokens(self) -> int:
        """Rows of E_v the decoder sees: the VLM's pooled visual tokens, then the stem's keypoint tokens."""
        return self.vlm.num_visual_tokens + self.config.stem.num_tokens

    def stem_inputs(self, images, wrist=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Full-resolution camera images -> the stem's (agent, wrist) tensors at its configured sizes."""
        sc = self.config.stem
        if self.uses_wrist and wrist is None:
            raise ValueError("this policy's decoder looks at the wrist camera: pass wrist= images")
        agent = preprocess_images(images, sc.image_size, self.device)
        w = preprocess_images(wrist, sc.wrist_size, self.device) if sc.wrist_size else None
        if w is not None and w.shape[0] != agent.shape[0]:
            raise ValueError(f"wrist: {w.shape[0]} images for {agent.shape[0]} agent-view images")
        return agent, w

    def visual_features(self, vlm_visual: torch.Tensor, stem_agent=None, stem_wrist=None,
                        prompt_context: torch.Tensor | None = None, instructions=None) -> torch.Tensor:
        """E_v for the decoder: the VLM's visual tokens, with the stem's tokens appended when it exists
        (its keypoints FiLM-conditioned on the VLM's prompt state or on the instructions' sentence encoding,
        ``VisualStemConfig.language``)."""
        if self.stem is None:
            return vlm_visual
        return torch.cat([vlm_visual.float(), self.stem(stem_agent, stem_wrist, prompt_context, instructions)], 1)

    def _state_tensor(self, state, batch: int) -> torch.Tensor | None:
        if state is None or self.config.state_dim == 0:
            return None
        s = np.asarray(state, dtype=np.float32)
        if s.ndim == 1:
            s = np.broadcast_to(s, (batch, s.shape[0]))
        if s.shape != (batch, self.config.state_dim):
            raise ValueError(f"state: expected ({self.config.state_dim},) or ({batch}, {self.config.state_dim}), "
                             f"got {s.shape}")
        if not np.all(np.isfinite(s)):
            raise ValueError("state: contains NaN or inf")
        if self.norm_stats is not None and getattr(self.norm_stats, "state", None) is not None:
            s = self.norm_stats.state.normalize(s)
        return torch.as_tensor(np.array(s, dtype=np.float32), device=self.device)

    def _unnormalize_actions(self, a: np.ndarray, state=None) -> np.ndarray:
        """Decoder rows (B, H, D), normalized -> ee_delta actions in robot units. ``action_frame="tcp_pose"``:
        the rows are TCP targets, turned into the ee_delta steps through them from ``state`` (robot units)."""
        if self.norm_stats is not None and getattr(self.norm_stats, "action", None) is not None:
            a = self.norm_stats.action.unnormalize(a)
        a = np.asarray(a, dtype=np.float64)
        if self.config.action_frame == "tcp_pose":
            if state is None:
                raise ValueError("this policy predicts TCP targets (action_frame='tcp_pose'): plan() and "
                                 "decode_actions() need the robot state")
            s = np.broadcast_to(np.asarray(state, dtype=np.float64).reshape(-1, STATE_DIM),
                                (a.shape[0], STATE_DIM))
            a = np.stack([tcp_targets_to_deltas(s[b], a[b]) for b in range(a.shape[0])])
        return a.astype(np.float32)

    def rtc_prefix(self, prev_actions, delay: int, state=None, method: str | None = None) -> dict:
        """Real-time chunking inputs for the decoder from the previous chunk: ``prev_actions`` (n, 7) robot units,
        its rows at this chunk's times (row 0 = the action due when this chunk's observation was taken), ``delay``
        = how many of them execute before this chunk can start. {} when there is nothing to continue."""
        if prev_actions is None:
            return {}
        a = np.asarray(prev_actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != self.config.action_dim or not np.all(np.isfinite(a)):
            raise ValueError(f"prev_actions must be (n, {self.config.action_dim}) finite numbers, got {a.shape}")
        H = self.config.horizon
        a = a[:H]
        if len(a) == 0:
            return {}
        d = int(delay)
        if not 0 <= d <= len(a):
            raise ValueError(f"delay must be in [0, {len(a)}] (the previous chunk's rows left), got {delay}")
        if self.config.action_frame == "tcp_pose":
            if state is None:
                raise ValueError("real-time chunking with action_frame='tcp_pose' needs the robot state")
            st = np.asarray(state, dtype=np.float64)
            a = deltas_to_tcp_targets(st[0] if st.ndim == 2 else st, a)
        if self.norm_stats is not None and getattr(self.norm_stats, "action", None) is not None:
            a = self.norm_stats.action.normalize(a)
        y = np.zeros((H, self.config.action_dim), dtype=np.float32)
        y[:len(a)] = a
        return {"prefix": torch.as_tensor(y, device=self.device)[None],
                "prefix_weights": rtc_weights(H, d, len(a)).to(self.device),
                "prefix_method": method or self.rtc_method}

    def _noise(self, batch: int, seed: int) -> torch.Tensor:
        c = self.config
        g = torch.Generator().manual_seed(int(seed))
        noise = torch.randn((1, c.horizon, c.action_dim), generator=g) * float(c.noise_scale)
        return noise.expand(batch, -1, -1).to(self.device)

    # ---- training forward (stage 3) ----------------------------------------------------------------
    def forward(self, batch: dict, lambda_vlm: float = 0.1, anchor_noise: float = 0.0,
                lambda_keypoints: float = 0.0) -> dict:
        """Stage-3 losses on a batch of action samples (shared_formats: image, instruction, anchors,
        latent_ids, actions (B, H, D) normalized, actions_pad (B, H), optional state (B, S) normalized).
        e_tau comes from the ground-truth anchors (the same anchors -> W -> encoder path as at run time);
        E_a from the teacher-forced VLM pass. loss = lambda_vlm * L_VLM + L_flow. With ``plan_anchors`` /
        ``plan_latent_ids`` in the batch (the VLM's own greedy plans, ``stage3_e2e.precompute_plans``), e_tau
        and E_a come from those instead, so the decoder trains on the conditions it gets at run time
        (L_VLM still uses the ground truth).
        anchor_noise: std of Gaussian noise (normalized image units) added to the anchors the decoder's e_tau
        is computed from (not to the VLM's targets), so the decoder does not learn to trust a trace more
        than the VLM's own predictions deserve at run time.
        lambda_keypoints: weight of ``loss_keypoints`` (:meth:`_add_keypoint_loss`; needs ``plan_keypoint_uv`` in
        the batch and a stem with ``lang_keypoints >= 2``)."""
        if "plan_latent_hidden" in batch:
            out = self._forward_cached_vlm(batch, anchor_noise)
            return self._add_keypoint_loss(out, batch, lambda_keypoints)
        images = batch["image"]
        out = self.vlm(images, list(batch["instruction"]), batch.get("anchors"), batch.get("latent_ids"))
        e_v = self.visual_features(out.visual_tokens, batch.get("stem_image"), batch.get("stem_wrist"),
                                   out.prompt_context, list(batch["instruction"]))
        anchors = batch["anchors"] if self.config.decoder_uses_trace else None
        e_a = out.latent_hidden
        if self.config.vlm_generates and ("plan_anchors" in batch or "plan_latent_ids" in batch):
            # condition the decoder on the VLM's OWN plan (what it sees at run time): a second teacher-forced
            # pass over the generated trace + latent tokens gives E_a exactly as generation computes it
            own = self.vlm(images, list(batch["instruction"]), batch.get("plan_anchors"),
                           batch.get("plan_latent_ids"))
            e_a = own.latent_hidden
            anchors = batch["plan_anchors"] if self.config.decoder_uses_trace else None
        flow = self._flow_loss(batch, anchors, e_a, e_v, anchor_noise)
        loss = lambda_vlm * out.loss + flow
        return self._add_keypoint_loss(
            {"loss": loss, "loss_flow": flow.detach(), "loss_vlm": out.loss.detach(),
             "loss_trace": out.loss_trace.detach(), "loss_latent": out.loss_latent.detach()}, batch, lambda_keypoints)

    def _add_keypoint_loss(self, out: dict, batch: dict, weight: float) -> dict:
        """Trace keypoint supervision: the agent view's first two language-queried stem keypoints (after the
        forward that just ran) are pulled towards where the demonstration grasps and places
        (``plan_keypoint_uv`` (B, 2, 2) normalized, ``plan_keypoint_valid`` (B, 2); ``ActionDataset.
        keypoint_targets``): squared error in image widths, over valid targets; the wrist camera's likewise when
        the batch has ``plan_wrist_keypoint_uv`` / ``_valid``. Adds ``loss_keypoints`` (and
        ``loss_wrist_keypoints``)."""
        if weight <= 0:
            return out
        if "plan_keypoint_uv" not in batch:
            raise ValueError("lambda_keypoints > 0 needs plan_keypoint_uv in the batch (ActionDataset.keypoint_targets)")
        out = dict(out)
        for cam, key, name in (("agentview", "plan_keypoint", "loss_keypoints"),
                               ("wrist", "plan_wrist_keypoint", "loss_wrist_keypoints")):
            if key + "_uv" not in batch:
                continue
            uv = self.stem.last_lang_keypoints.get(cam) if self.stem is not None else None
            if uv is None or uv.shape[1] < 2:
                raise ValueError(f"lambda_keypoints > 0 needs a visual stem with lang_keypoints >= 2 (on the {cam} camera)")
            tgt = batch[key + "_uv"].to(uv.device).float()
            valid = batch[key + "_valid"].to(uv.device).float()
            err = (uv[:, :2] - tgt).pow(2).sum(-1)                                      # (B, 2)
            kp = (err * valid).sum() / valid.sum().clamp_min(1.0)
            out.update(loss=out["loss"] + weight * kp, **{name: kp.detach()})
        return out

    def _flow_loss(self, batch: dict, anchors, e_a, e_v: torch.Tensor, anchor_noise: float) -> torch.Tensor:
        """L_flow of the batch's action chunks given the decoder's conditions (the shared tail of both stage-3
        forwards); ``anchor_noise`` perturbs only the anchors behind e_tau."""
        if anchors is not None and anchor_noise > 0:
            anchors = (anchors.float() + anchor_noise * torch.randn_like(anchors.float())).clamp(0, 1)
        state = batch.get("state") if self.config.state_dim > 0 else None
        cond = self.decoder_conditions(anchors, e_a, e_v, state, batch.get("image_age"))
        return self.decoder.loss(batch["actions"].float(), pad_mask=batch.get("actions_pad"), **cond)

    def _forward_cached_vlm(self, batch: dict, anchor_noise: float = 0.0) -> dict:
        """Stage 3 with a frozen VLM: its generation outputs per frame were precomputed
        (``stage3_e2e.precompute_plans(..., features=True)``: ``plan_latent_hidden`` = E_a as generation gives
        it, ``plan_visual_tokens``, ``plan_prompt_context``, ``plan_anchors``), so only the decoder (and the
        stem) run. Exactly the conditions of run time, as long as the VLM stays frozen."""
        if any(p.requires_grad for p in self.vlm.parameters()):
            raise ValueError("cached VLM outputs in the batch but the VLM is trainable: they would go stale")
        e_v = self.visual_features(batch["plan_visual_tokens"], batch.get("stem_image"), batch.get("stem_wrist"),
                                   batch.get("plan_prompt_context"), list(batch["instruction"]))
        anchors = batch["plan_anchors"] if self.config.decoder_uses_trace else None
        flow = self._flow_loss(batch, anchors, batch["plan_latent_hidden"], e_v, anchor_noise)
        zero = flow.new_zeros(())
        return {"loss": flow, "loss_flow": flow.detach(), "loss_vlm": zero, "loss_trace": zero, "loss_latent": zero}

    # ---- serving -----------------------------------------------------------------------------------
    def _generate(self, images, instruction, wrist, temperature: float):
        """The shared front of plan / plan_trace: inputs -> VLM generation -> decoder E_v (with the stem)."""
        x, instr, wh = self._batch_inputs(images, instruction)
        stem_in = self.stem_inputs(images, wrist) if self.stem is not None else (None, None)
        gen = self.vlm.generate(x, instr, temperature=temperature)
        e_v = self.visual_features(gen.visual_tokens, *stem_in, gen.prompt_context, instr)
        return x, instr, wh, gen, e_v

    def _batch_inputs(self, images, instruction):
        x = preprocess_images(images, self.config.image_size)
        h, w = (images.shape[-3], images.shape[-2]) if isinstance(images, np.ndarray) else \
            ((images[0].shape[0], images[0].shape[1]) if isinstance(images, (list, tuple)) else
             (images.shape[-2], images.shape[-1]))
        B = x.shape[0]
        instr = [instruction] * B if isinstance(instruction, str) else list(instruction)
        if len(instr) == 1 and B > 1:
            instr = instr * B
        if len(instr) != B:
            raise ValueError(f"instruction: {len(instr)} instructions for {B} images")
        return x.to(self.device, self.vlm_dtype), instr, (int(w), int(h))

    @torch.no_grad()
    def plan(self, images, instruction, state=None, num_flow_steps: int | None = None, seed: int = 0,
             temperature: float = 0.0, wrist=None, prev_actions=None, delay: int = 0, image_age: float = 0.0) -> Plan:
        """VLM plan + action chunk for a batch (see the module docstring). ``wrist``: wrist-camera images,
        required when the decoder's visual stem uses them. ``prev_actions`` / ``delay``: continue the running
        chunk by real-time chunking (:meth:`rtc_prefix`). ``image_age``: control steps by which the images are
        older than ``state`` (read by a decoder trained with ``image_age_cond``)."""
        t_all = time.perf_counter()
        was_training = self.training
        self.eval()
        x, instr, wh, gen, e_v = self._generate(images, instruction, wrist, temperature)
        B = x.shape[0]
        t0 = time.perf_counter()
        cond = self.decoder_conditions(gen.anchors, gen.latent_hidden, e_v, self._state_tensor(state, B), image_age)
        a_norm = self.decoder.sample(**cond, num_steps=num_flow_steps, noise=self._noise(B, seed),
                                     **self.rtc_prefix(prev_actions, delay, state))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        timings = dict(gen.timings)
        timings["flow"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_all
        self.train(was_training)
        a_norm_np = a_norm.float().cpu().numpy()
        kp = self.stem.last_lang_keypoints.get("agentview") if self.stem is not None else None
        return Plan(keypoints=kp[:, :2].float().cpu().numpy() if kp is not None and kp.shape[1] >= 2 else None,
                    anchors=gen.anchors, latent_ids=gen.latent_ids, texts=gen.texts, parse_ok=gen.parse_ok,
                    actions=self._unnormalize_actions(a_norm_np, state), actions_normalized=a_norm_np,
                    latent_hidden=gen.latent_hidden.float().cpu().numpy(),
                    visual_features=e_v.float().cpu().numpy(), instructions=instr, timings=timings,
                    image_size=wh)

    @torch.no_grad()
    def plan_trace(self, images, instruction, temperature: float = 0.0, plan_id: int = 0, wrist=None):
        """VLM only -> ``TracePlan`` (a list for batched input: a list of instructions or of images, or a
        4-D image array/tensor). The controller turns it into actions with ``decode_actions``. With a visual
        stem its tokens (from ``images`` at full resolution and ``wrist``) travel in E_v."""
        t_all = time.perf_counter()
        was_training = self.training
        self.eval()
        x, instr, wh, gen, e_v = self._generate(images, instruction, wrist, temperature)
        self.train(was_training)
        latency = time.perf_counter() - t_all
        plans = []
        for b in range(x.shape[0]):
            plans.append(make_trace_plan(gen.anchors[b], gen.latent_ids[b], gen.latent_hidden[b].float().cpu().numpy(),
                                         e_v[b].float().cpu().numpy(), image_size=wh,
                                         instruction=instr[b], raw_text=gen.texts[b], parse_ok=bool(gen.parse_ok[b]),
                                         plan_id=plan_id, planning_latency_s=latency))
        batched = not isinstance(instruction, str) or (isinstance(images, (list, tuple)) and len(images) > 1) or \
            (hasattr(images, "ndim") and images.ndim == 4)
        return plans if batched else plans[0]

    @torch.no_grad()
    def warmup(self, runs: int = 2, num_flow_steps: int | None = None) -> dict:
        """Plan and decode ``runs`` times on blank inputs so that the first real request does not pay for lazy
        initialisation (allocator growth, kernel selection; on CPU the shipped checkpoint's first plan took twice
        its steady latency, on a GPU the first CUDA calls take far longer). Returns the seconds of the last run of
        each (what the steady state costs)."""
        img = np.zeros((self.config.image_size, self.config.image_size, 3), dtype=np.uint8)
        wrist = np.zeros((self.config.stem.wrist_size,) * 2 + (3,), dtype=np.uint8) if self.uses_wrist else None
        state = np.zeros(self.config.state_dim, dtype=np.float32) if self.config.state_dim else None
        out = {}
        for _ in range(max(1, int(runs))):
            t0 = time.perf_counter()
            tp = self.plan_trace(img, "warm up", wrist=wrist)
            t1 = time.perf_counter()
            self.decode_actions(tp, state, num_flow_steps=num_flow_steps)
            out = {"plan_s": t1 - t0, "decode_s": time.perf_counter() - t1}
        return out

    def decode_actions(self, trace_plan: TracePlan, state=None, num_flow_steps: int | None = None,
                       seed: int = 0, prev_actions=None, delay: int = 0, image_age: float = 0.0) -> ActionChunkData:
        """Flow decoder on a ``TracePlan`` (+ fresh state) -> ``ActionChunkData`` in robot units. ``prev_actions`` /
        ``delay``: continue the running chunk by real-time chunking (:meth:`rtc_prefix`). ``image_age``: control
        steps by which the plan's images are older than ``state`` (read by a decoder with ``image_age_cond``)."""
        tp = trace_plan.validate()
        K, d = self.vlm.num_latent_tokens, self.vlm.hidden_size
        if self.config.use_latent and tp.latent_hidden.shape != (K, d):
            raise ValueError(f"trace_plan.latent_hidden: expected ({K}, {d}), got {tp.latent_hidden.shape}")
        if tp.visual_features.ndim != 2 or tp.visual_features.shape[1] != d:
            raise ValueError(f"trace_plan.visual_features: expected (M, {d}), got {tp.visual_features.shape}")
        if self.config.decoder_uses_trace and tp.anchors.shape != (self.config.num_anchors, 2):
            raise ValueError(f"trace_plan.anchors: expected ({self.config.num_anchors}, 2), got {tp.anchors.shape}")
        vis, e_a_np = tp.visual_features, tp.latent_hidden
        if self.config.decoder_uses_prompt_states:   # E_a rows travel after the M E_v rows (make_trace_plan)
            M, Kp = self.num_decoder_visual_tokens, self.vlm.num_prompt_states
            if vis.shape[0] != M + Kp or tp.latent_hidden.shape[0] != 0:
                raise ValueError(f"trace_plan.visual_features: expected ({M} + {Kp}, {d}) (E_v then the prompt-state "
                                 f"E_a) and an empty latent_hidden, got {vis.shape} and {tp.latent_hidden.shape}")
            vis, e_a_np = vis[:M], vis[M:]
        dev = self.device
        e_a = torch.as_tensor(e_a_np, device=dev)[None]
        e_v = torch.as_tensor(vis, device=dev)[None]
        cond = self.decoder_conditions(tp.anchors[None], e_a, e_v, self._state_tensor(state, 1), image_age)
        a = self.decoder.sample(**cond, num_steps=num_flow_steps, noise=self._noise(1, seed),
                                **self.rtc_prefix(prev_actions, delay, state))
        actions = self._unnormalize_actions(a.float().cpu().numpy(), state)[0]
        return ActionChunkData(actions=actions, dt=self.config.control_dt, plan_id=tp.plan_id,
                               stamp_ns=tp.stamp_ns, frame_id="").validate()

    # ---- LoRA (stage 3) --------------------------------------------------------------------------------
    def apply_lora(self, r: int = 16, alpha: int = 32, dropout: float = 0.0, train_act_tokens: bool = True,
                   vision: bool = False):
        """Freeze everything, then add LoRA to the causal LM's attention/MLP projections and make the
        ``<ACT_k>`` embedding rows trainable (peft ``trainable_token_indices``; with a tied LM head the same
        rows of the output layer follow). ``vision``: also LoRA on the vision towers' attention/MLP
        linears (prismatic backbone) and the projector (+ image position embedding) fully trainable -
        for the conventional variant, which has no stage 2. The flow decoder is left to the caller.
        Returns the LM's peft model handle."""
        from peft import LoraConfig, get_peft_model

        if self._peft is not None:
            raise ValueError("apply_lora: LoRA is already applied")
        bb = self.vlm.backbone
        if vision and not hasattr(bb, "towers"):
            raise ValueError(f"apply_lora(vision=True): backbone {type(bb).__name__} has no vision towers to adapt")
        self.requires_grad_(False)
        lm = self._causal_lm()
        kw = dict(r=r, lora_alpha=alpha, lora_dropout=dropout,
                  target_modules=r".*layers\.\d+\." + LORA_TARGETS)
        if train_act_tokens:
            kw["trainable_token_indices"] = {"embed_tokens": list(self.vlm.act_ids)}
        self._peft = get_peft_model(lm, LoraConfig(**kw))   # mutates ``lm`` in place
        self._peft_vision = []
        if vision:
            for tower in bb.towers:   # each mutated in place, like the LM
                self._peft_vision.append(get_peft_model(tower, LoraConfig(
                    r=r, lora_alpha=alpha, lora_dropout=dropout,
                    target_modules=getattr(bb, "vision_lora_targets", VISION_LORA_TARGETS))))
            bb.projector.requires_grad_(True)
            if bb.image_pos is not None:
                bb.image_pos.requires_grad_(True)
        return self._peft

    def merge_lora(self) -> None:
        """Fold LoRA (and trainable token rows) into the base weights and remove the peft layers."""
        if self._peft is None:
            return
        self._peft.merge_and_unload()
        for pv in getattr(self, "_peft_vision", []):
            pv.merge_and_unload()
        self._peft, self._peft_vision = None, []

    @property
    def has_lora(self) -> bool:
        return self._peft is not None

    def _causal_lm(self) -> nn.Module:
        bb = self.vlm.backbone
        if hasattr(bb, "lm"):
            return bb.lm
        if hasattr(bb, "llava"):
            return bb.llava.model.language_model
        raise ValueError(f"apply_lora: backbone {type(bb).__name__} exposes no causal LM")

    # ---- checkpoints -------------------------------------------------------------------------------------
    def resolved_config(self) -> SemanticVLAConfig:
        """Config that rebuilds this exact architecture without any pretrained directory."""
        c = copy.deepcopy(self.config)
        c.vlm = self.vlm.backbone.resolved_config(c.vlm)
        c.text_tokenizer.pretrained_path = None
        return c

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the checkpoint directory (module docstring). LoRA, if applied, is merged first."""
        if self._peft is not None:
            warnings.warn("save_pretrained: merging LoRA into the base weights before saving", stacklevel=2)
            self.merge_lora()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = self.resolved_config()
        meta = {"model_type": MODEL_TYPE, "config": cfg.to_dict(),
                "decoder_config": dataclasses.asdict(self.decoder.config), "codebook_version": self.codebook_version,
                "lora": "merged"}
        (d / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        weights = nn.ModuleDict({"vlm": self.vlm, "decoder": self.decoder,
                                 **({"stem": self.stem} if self.stem is not None else {})})
        save_model(weights, str(d / WEIGHTS_NAME), metadata={"format": "pt"})
        self.text_tokenizer.save_pretrained(str(d / TOKENIZER_DIR))
        self.latent_tokenizer.save_pretrained(d / LATENT_TOKENIZER_DIR, include_decoders=False)
        if self.norm_stats is not None:
            self.norm_stats.save(d / NORM_STATS_NAME)
        elif (d / NORM_STATS_NAME).exists():
            (d / NORM_STATS_NAME).unlink()
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | str = torch.float32, cuda_graph: bool = False,
                        config_overrides: dict | None = None) -> "SemanticVLAPolicy":
        """Load a checkpoint directory; checks that the latent tokenizer's codebook version matches the
        one the VLM was trained against. Raises ValueError naming the file that is missing or wrong.

        ``config_overrides``: change decoder-side switches (``DECODER_SIDE_SWITCHES``: ``use_latent``,
        ``trace_to_decoder``) of the stored config, e.g. a stage-2 policy turned into the
        ``use_latent=False`` variant for stage 3. The VLM weights load unchanged; if the decoder's
        inputs change, its stored weights are skipped and it keeps a fresh init (stage 3 rebuilds it)."""
        d = Path(directory)
        cfg_path = d / CONFIG_NAME
        if not cfg_path.is_file():
            raise ValueError(f"{d}: not a policy checkpoint ({CONFIG_NAME} missing)")
        meta = json.loads(cfg_path.read_text())
        if meta.get("model_type") != MODEL_TYPE:
            raise ValueError(f"{cfg_path}: model_type is {meta.get('model_type')!r}, expected {MODEL_TYPE!r}")
        for name in (WEIGHTS_NAME, TOKENIZER_DIR, LATENT_TOKENIZER_DIR):
            if not (d / name).exists():
                raise ValueError(f"{d}: {name} missing")
        config = SemanticVLAConfig.from_dict(meta["config"])
        if config_overrides:
            bad = sorted(set(config_overrides) - set(DECODER_SIDE_SWITCHES))
            if bad:
                raise ValueError(f"config_overrides: {bad} cannot change on a trained checkpoint ({cfg_path}); "
                                 f"only the decoder-side switches {list(DECODER_SIDE_SWITCHES)} can")
            config = SemanticVLAConfig.from_dict({**config.to_dict(), **config_overrides})
        lt = LatentTokenizer.from_pretrained(d / LATENT_TOKENIZER_DIR, with_decoders=False)
        if lt.codebook_version != meta.get("codebook_version"):
            raise ValueError(f"{d / LATENT_TOKENIZER_DIR}: codebook version {lt.codebook_version} differs from the "
                             f"version the VLM was trained with ({meta.get('codebook_version')}, {cfg_path})")
        tok = load_text_tokenizer(d / TOKENIZER_DIR, config.codebook_size)
        stats = None
        if (d / NORM_STATS_NAME).is_file():
            from .normalize import DatasetStats

            stats = DatasetStats.load(d / NORM_STATS_NAME)
        policy = cls(config, text_tokenizer=tok, latent_tokenizer=lt, norm_stats=stats,
                     codebook_version=meta["codebook_version"])
        now = dataclasses.asdict(policy.decoder.config)
        stored = {"image_age_cond": False, **(meta.get("decoder_config") or {})}   # (saved before the field existed)
        gains_age = now["image_age_cond"] and not stored["image_age_cond"]      # (an override switching it on)
        keep_decoder = now == {**stored, "image_age_cond": now["image_age_cond"] if gains_age else stored["image_age_cond"]}
        parts = {"vlm": policy.vlm, "decoder": policy.decoder} if keep_decoder or not config_overrides else \
            {"vlm": policy.vlm}
        stored_stem = SemanticVLAConfig.from_dict(meta["config"]).stem
        if policy.stem is not None and (stored_stem == config.stem or not config_overrides):
            parts["stem"] = policy.stem          # an overridden stem starts fresh (stage 3 trains it)
        missing, unexpected = load_model(nn.ModuleDict(parts), str(d / WEIGHTS_NAME), strict=False)
        if gains_age and "decoder" in parts:      # (a decoder that gains the image age starts it at zero)
            missing = [k for k in missing if not k.startswith("decoder.age_mlp.")]
        for part in ("decoder", "stem"):
            if part not in parts:
                unexpected = [k for k in unexpected if not k.startswith(part + ".")]
        if missing or unexpected:
            raise ValueError(f"{d / WEIGHTS_NAME}: does not match the config: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
        policy.eval()
        return policy.to_runtime(device, dtype, cuda_graph)
