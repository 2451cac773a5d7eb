"""Pretrained transformers VLMs as SemanticVLA backbones (``model/hf_backbones.py``): Qwen2.5-VL, Qwen3-VL,
SmolVLM, PaliGemma. Tiny random configurations of the real classes are saved with ``save_pretrained`` (model,
the family's tokenizer class over a BPE trained here, the family's image processor) into a directory and
loaded through the same local-path preset a user runs (``get_config("tiny-<backbone>", pretrained_path=DIR)``):
stage 2 and stage 3 steps lower the loss, KV-cache generation matches the teacher-forced pass, LoRA merges
exactly, a saved policy plans identically, and the ROS planner node plans with such a checkpoint."""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

from ros_testing import h, wait_for_output  # noqa: F401 (h: the harness fixture)
from semanticvla_core.model.config import TINY_HF_CONFIGS, get_config
from semanticvla_core.model.hf_backbones import BACKBONE_CLASSES, image_span
from semanticvla_core.model.text_tokenizer import BOS, EOS, PAD, UNK, TextTokenizerConfig, _train_bpe, generate_corpus
from semanticvla_core.normalize import DatasetStats, NormStats
from semanticvla_core.policy import SemanticVLAPolicy
from semanticvla_core.training.stage2_vlm import set_stage2_trainable
from semanticvla_core.training.stage3_e2e import Stage3Config, prepare_stage3

torch.set_num_threads(1)
BACKBONES = list(BACKBONE_CLASSES)
INSTR = ["pick up the red block", "push the blue cube to the left of the bowl"]
TOKENIZER_CLASS = {"qwen2_5_vl": "Qwen2Tokenizer", "qwen3_vl": "Qwen2Tokenizer", "smolvlm": "GPT2Tokenizer",
                   "paligemma": "GemmaTokenizer"}


# ------------------------------------------------------------------------------------------ local model dirs
def _gemma_tokenizer():
    """A Gemma-convention tokenizer (``▁`` for spaces, byte fallback, digits never merged) trained here."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("▁", "merged_with_next"),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    corpus = generate_corpus(3000)
    alphabet = sorted({c for line in corpus for c in line.replace(" ", "▁")})
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                        initial_alphabet=alphabet, show_progress=False))
    model = json.loads(tok.to_str())["model"]
    return GemmaTokenizer(vocab=model["vocab"], merges=[tuple(m) if isinstance(m, list) else tuple(m.split(" "))
                                                        for m in model["merges"]])


def _family_tokenizer(backbone: str):
    """The tokenizer class the family ships, over a byte-level BPE trained offline (Gemma: its own convention)."""
    import transformers

    if backbone == "paligemma":
        return _gemma_tokenizer()
    base = _train_bpe(TextTokenizerConfig(vocab_size=600, corpus_lines=3000))
    cls = getattr(transformers, TOKENIZER_CLASS[backbone])
    return cls(tokenizer_object=base._tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK)


def _image_processor(backbone: str):
    from transformers import Idefics3ImageProcessor, Qwen2VLImageProcessor, SiglipImageProcessor

    if backbone == "qwen2_5_vl":
        return Qwen2VLImageProcessor(patch_size=8, merge_size=2)
    if backbone == "qwen3_vl":
        return Qwen2VLImageProcessor(patch_size=8, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return Idefics3ImageProcessor() if backbone == "smolvlm" else SiglipImageProcessor()


@functools.lru_cache(maxsize=None)
def _saved_model(backbone: str, root: str) -> str:
    """A tiny ``*ForConditionalGeneration`` (random, seeded) + tokenizer + image processor in ``root/backbone``;
    its vocabulary is the tokenizer's (no ACT rows: loading must resize the embeddings)."""
    import transformers

    from pathlib import Path

    d = Path(root) / backbone
    tok = _family_tokenizer(backbone)
    cfg = json.loads(json.dumps(TINY_HF_CONFIGS[backbone]))
    cfg["text_config"]["vocab_size"] = len(tok)
    cls = getattr(transformers, BACKBONE_CLASSES[backbone].model_classes[cfg["model_type"]])
    torch.manual_seed(0)
    cls(cls.config_class.from_dict(cfg)).save_pretrained(d)
    tok.save_pretrained(d)
    _image_processor(backbone).save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("hf_models"))
    return lambda backbone: _saved_model(backbone, root)


def _policy(path: str, backbone: str) -> SemanticVLAPolicy:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    stats = DatasetStats(action=NormStats.compute(rng.normal(0, 0.02, (200, 7))))
    p = SemanticVLAPolicy(get_config(f"tiny-{backbone}", pretrained_path=path), norm_stats=stats).eval()
    with torch.no_grad():   # the decoder's output layer starts at zero: give it weights so the chunk varies
        for lin in (p.decoder.action_out, p.decoder.ada_out[1]):
            lin.weight.normal_(0, 0.2)
    return p


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return dict(image=torch.rand(2, 3, 64, 64, generator=g), instruction=INSTR,
                anchors=torch.rand(2, 4, 2, generator=g), latent_ids=torch.randint(0, 32, (2, 4), generator=g),
                actions=torch.randn(2, 8, 7, generator=g), actions_pad=torch.zeros(2, 8, dtype=torch.bool))


def _steps(params, loss_fn, n: int, lr: float) -> list[float]:
    opt = torch.optim.AdamW(params, lr=lr)
    losses = []
    for _ in range(n):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("backbone", BACKBONES)
def test_local_pretrained_backbone_trains_merges_saves_and_plans_identically(backbone, model_dir, tmp_path):
    path = model_dir(backbone)
    p = _policy(path, backbone)
    bb = p.vlm.backbone
    assert isinstance(bb, BACKBONE_CLASSES[backbone])
    # the model's own tokenizer, with <ACT_k> added as single tokens and embedding rows for them
    assert p.text_tokenizer.name_or_path == path and len(p.text_tokenizer) == len(_family_tokenizer(backbone)) + 32
    assert max(p.vlm.act_ids) < bb.model.get_input_embeddings().weight.shape[0]
    assert bb.model.get_input_embeddings().weight.shape[0] == bb.model.lm_head.weight.shape[0]
    b = _batch()

    # stage 2: the VLM trains, its pretrained vision encoder is frozen, the loss drops
    params = set_stage2_trainable(p)
    assert not any(x.requires_grad for x in bb.towers[0].parameters())
    p.train()
    vlm_loss = lambda: p.vlm(b["image"], INSTR, b["anchors"], b["latent_ids"]).loss  # noqa: E731
    losses = _steps(params, vlm_loss, 6, 3e-3)
    assert losses[-1] < 0.8 * losses[0], losses
    p.eval()

    # KV-cache generation (M-RoPE / DeepStack / prefix-LM paths) = the teacher-forced pass; batch = single
    with torch.no_grad():
        res = p.vlm.generate(b["image"], INSTR)
        out = p.vlm(b["image"], INSTR, torch.from_numpy(res.anchors), torch.from_numpy(res.latent_ids))
        one = p.vlm.generate(b["image"][1:], INSTR[1:])
    assert all(res.parse_ok) and res.latent_ids.shape == (2, 4)
    torch.testing.assert_close(out.latent_hidden, res.latent_hidden, rtol=1e-4, atol=1e-4)
    assert one.texts[0] == res.texts[1]

    # stage 3: LoRA on the LM + <ACT_k> rows + the decoder; the loss drops; merging keeps the outputs
    params = prepare_stage3(p, Stage3Config(model=p.config, lora_r=4, lora_alpha=8), state_dim=0)
    lora = [n for n, x in p.named_parameters() if x.requires_grad and "lora_" in n]
    assert lora and all(n.startswith(f"vlm.backbone.{bb.language_model_prefix()}.") for n in lora), lora[:3]
    p.train()

    def e2e_loss():
        torch.manual_seed(0)        # the same flow-matching noise and times each step: a comparable loss
        return p(b, lambda_vlm=0.5)["loss"]
    losses = _steps(params, e2e_loss, 6, 3e-3)
    assert losses[-1] < losses[0], losses
    p.eval()
    with torch.no_grad():
        before = p.vlm(b["image"], INSTR, b["anchors"], b["latent_ids"]).loss
        p.merge_lora()
        after = p.vlm(b["image"], INSTR, b["anchors"], b["latent_ids"]).loss
    torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-4)

    # save -> load (without the original directory) -> identical plans
    imgs = (np.random.default_rng(1).random((2, 80, 80, 3)) * 255).astype(np.uint8)
    a = p.plan(imgs, INSTR)
    p.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())["config"]["vlm"]
    assert saved["pretrained_path"] is None and saved["hf_config"]["model_type"] == bb.model.config.model_type
    q = SemanticVLAPolicy.from_pretrained(tmp_path / "ckpt")
    c = q.plan(imgs, INSTR)
    assert a.texts == c.texts
    np.testing.assert_array_equal(a.latent_ids, c.latent_ids)
    np.testing.assert_array_equal(a.actions, c.actions)
    np.testing.assert_array_equal(a.latent_hidden, c.latent_hidden)


@pytest.mark.parametrize("backbone", ["qwen2_5_vl", "qwen3_vl"])
def test_qwen_mrope_positions_are_the_models_own(backbone):
    """The adapter's (t, h, w) positions from SemanticVLM's 1-D positions equal Qwen's get_rope_index for the
    same [left padding][image][text] rows, in the prefill and in cached decoding steps."""
    bb = SemanticVLAPolicy(get_config(f"tiny-{backbone}")).vlm.backbone
    P, g, L = bb.num_image_tokens, bb.image_grid, 7
    mask = torch.ones(2, 2 + P + L, dtype=torch.long)
    mask[1, :2] = 0                                                     # row 1: two left pads
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    mm = torch.zeros_like(mask)
    mm[0, :P] = 1
    mm[1, 2:2 + P] = 1
    ids = torch.where(mm.bool(), bb.model.config.image_token_id, 5)
    thw = torch.tensor([[1, 2 * g, 2 * g]] * 2)                         # before the 2x2 merge
    ref, _ = bb.model.model.get_rope_index(ids, mm, image_grid_thw=thw, attention_mask=mask)
    ours = bb.mrope_positions(pos, image_span(pos, P))
    valid = mask.bool()
    assert torch.equal(ours[:, valid], ref[-3:][:, valid])
    step = pos[:, -1:] + 1                                              # the next decoded token
    assert torch.equal(bb.mrope_positions(step, image_span(step, P))[:, :, 0], ref[-3:, :, -1] + 1)


def test_clear_errors_for_missing_or_wrong_model_directories(tmp_path, model_dir):
    with pytest.raises(ValueError, match="needs the local qwen2_5_vl model directory"):
        get_config("qwen25vl-3b")
    with pytest.raises(ValueError, match="not a directory"):
        get_config("tiny-smolvlm", pretrained_path=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        get_config("tiny-smolvlm", pretrained_path=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="holds a 'smolvlm' model"):
        get_config("tiny-paligemma", pretrained_path=model_dir("smolvlm"))
    with pytest.raises(ValueError, match="pretrained_path: an option"):
        get_config("tiny", pretrained_path="x")




@pytest.mark.parametrize("backbone", BACKBONES)
def test_ros_planner_plans_with_a_pretrained_backbone_checkpoint(backbone, h, model_dir, tmp_path):
    from sensor_msgs.msg import Image

    from semanticvla_core.image_convert import rgb_to_image_fields
    from semanticvla_ros.messages import trace_from_msg
    from semanticvla_ros.msg import Trace
    from semanticvla_ros.ros_conversions import fill_image

    pol = _policy(model_dir(backbone), backbone)
    ckpt = pol.save_pretrained(tmp_path / "ckpt")
    node = h.start("planner", {"checkpoint": str(ckpt), "instruction": "put the red cube on the plate"})
    traces = h.record(Trace, "/semanticvla/trace")
    pub = h.publisher(Image, "/semanticvla/observation/agentview")
    assert wait_for_output(node, "loaded policy", 90), node._seen
    rgb = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)

    def send():
        pub.publish(fill_image(Image(), rgb_to_image_fields(rgb), h.now_ns(), "agentview_optical_frame"))
    assert h.spin_until(lambda: (send(), h.spin_for(0.3), bool(traces))[-1], 60), node._seen
    tp = trace_from_msg(traces[-1][1])
    assert tp.parse_ok and tp.anchors.shape == (4, 2) and tp.latent_ids.shape == (4,)
    assert tp.latent_hidden.shape == (4, pol.vlm.hidden_size)          # E_a from the backbone's LM
    assert tp.raw_text.startswith("[[") and tp.raw_text.count("<ACT_") == 4


@pytest.mark.parametrize("backbone", BACKBONES)
def test_gradient_checkpointing_and_bf16_code_paths(backbone):
    """The config flag turns on HF gradient checkpointing (gradients still flow); bf16 serving plans (CPU here;
    the GPU path is the same code with device="cuda")."""
    torch.manual_seed(0)
    p = SemanticVLAPolicy(get_config(f"tiny-{backbone}", vlm={"gradient_checkpointing": True}))
    bb = p.vlm.backbone
    assert bb.model.is_gradient_checkpointing
    b = _batch()
    p.train()
    p.vlm(b["image"], INSTR, b["anchors"], b["latent_ids"]).loss.backward()
    assert bb.lm.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    p.eval().to_runtime("cpu", torch.bfloat16)
    assert p.vlm_dtype == torch.bfloat16
    plan = p.plan((np.random.default_rng(0).random((1, 64, 64, 3)) * 255).astype(np.uint8), INSTR[:1])
    assert plan.parse_ok[0] and np.isfinite(plan.actions).all()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_conventional_variant_adapts_the_vision_encoder_with_lora(backbone):
    """Both switches off (no stage 2): stage 3 puts LoRA on the LM and the vision encoder and trains the
    projector; nothing else of the VLM trains, and merging keeps the outputs."""
    from semanticvla_core.training.stage3_e2e import trainable_parameter_report

    torch.manual_seed(0)
    p = SemanticVLAPolicy(get_config(f"tiny-{backbone}", use_trace=False, use_latent=False))
    cfg = Stage3Config(model=p.config, lora_r=4, lora_alpha=8)
    prepare_stage3(p, cfg, state_dim=0)
    counts = trainable_parameter_report(p)
    assert counts["lora"] and counts["vision_lora"] and counts["projector"] and not counts["other"], counts
    b = _batch()
    p.train()
    torch.manual_seed(0)
    p(b)["loss"].backward()
    p.eval()
    with torch.no_grad():
        before = p.vlm(b["image"], INSTR).latent_hidden
        p.merge_lora()
        after = p.vlm(b["image"], INSTR).latent_hidden
    torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-4)


def test_paligemma_image_tokens_attend_bidirectionally_and_text_causally():
    bb = SemanticVLAPolicy(get_config("tiny-paligemma")).vlm.backbone.eval()
    P = bb.num_image_tokens
    emb = torch.randn(1, P + 3, bb.hidden_size)
    mask, pos = torch.ones(1, P + 3, dtype=torch.long), torch.arange(P + 3).view(1, -1)
    with torch.no_grad():
        h = bb.forward_embeds(emb, mask, pos)[0]
        later_image, text = emb.clone(), emb.clone()
        later_image[:, P - 1] += 1.0
        text[:, P] += 1.0
        assert not torch.allclose(bb.forward_embeds(later_image, mask, pos)[0][:, 0], h[:, 0])   # sees a later image token
        torch.testing.assert_close(bb.forward_embeds(text, mask, pos)[0][:, :P], h[:, :P])       # not the text after it


def test_qwen_patchified_pixels_are_the_image_processors():
    """The adapter's torch preprocessing gives Qwen's image processor's ``pixel_values`` / ``image_grid_thw``."""
    from transformers import Qwen2VLImageProcessor

    bb = SemanticVLAPolicy(get_config("tiny-qwen2_5_vl")).vlm.backbone
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ref = Qwen2VLImageProcessor(patch_size=8, merge_size=2, temporal_patch_size=2, do_resize=False)(
        images=[img], return_tensors="pt")
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    pix, thw = bb._patchify((x - bb.mean) / bb.std)
    assert torch.equal(thw, ref["image_grid_thw"])
    torch.testing.assert_close(pix, ref["pixel_values"].float(), rtol=1e-4, atol=1e-4)


def test_training_clis_fine_tune_a_local_backbone_directory(model_dir, tmp_path):
    """The README's recipe on the command line: stage 2 from a local model directory (``--config <preset>
    --backbone-path DIR``), then stage 3 from its policy; the result loads and plans."""
    import importlib.util
    from pathlib import Path

    def cli(name):
        spec = importlib.util.spec_from_file_location(f"cli_{name}", Path(__file__).parents[1] / "training" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    common = ["--synthetic", "16", "--steps", "2", "--batch-size", "4", "--num-workers", "0", "--no-progress",
              "--save-every", "0", "--eval-fraction", "0.25", "--threads", "1"]
    path = model_dir("smolvlm")
    assert cli("stage2_vlm").main(["--config", "tiny-smolvlm", "--backbone-path", path, "--out", str(tmp_path / "s2"),
                                   *common]) == 0
    s2 = SemanticVLAPolicy.from_pretrained(tmp_path / "s2" / "policy")
    assert s2.config.vlm.backbone == "smolvlm" and s2.config.vlm.hf_config     # (self-contained: no path needed)
    assert cli("stage3_e2e").main(["--init-from", str(tmp_path / "s2" / "policy"), "--out", str(tmp_path / "s3"),
                                   *common]) == 0
    pol = SemanticVLAPolicy.from_pretrained(tmp_path / "s3" / "policy")
    img = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    assert pol.plan(img, "pick up the red block").actions.shape[-1] == pol.config.action_dim
