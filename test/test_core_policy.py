"""SemanticVLAPolicy: checkpoints (identical plans after reload, no pickle, codebook check), the split
planner/controller API, switches, LoRA trainable parameters, timings, dtype."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core_model_fixtures import CODEBOOK, text_tokenizer, tiny_config
from semanticvla_core.interfaces import ActionChunkData, TracePlan
from semanticvla_core.normalize import DatasetStats, NormStats
from semanticvla_core.policy import SemanticVLAPolicy

torch.set_num_threads(1)
INSTR = ["pick up the red block", "open the drawer"]


def _policy(seed=0, stats=True, **overrides) -> SemanticVLAPolicy:
    torch.manual_seed(seed)
    cfg = tiny_config(state_dim=3, **overrides)
    rng = np.random.default_rng(seed)
    st = DatasetStats(action=NormStats.compute(rng.normal(0, 0.02, (200, 7))),
                      state=NormStats.compute(rng.normal(0, 1, (200, 3)))) if stats else None
    p = SemanticVLAPolicy(cfg, text_tokenizer=text_tokenizer(), norm_stats=st).eval()
    with torch.no_grad():   # the decoder's output layer starts at zero (velocity 0): give it weights so the
        for lin in (p.decoder.action_out, p.decoder.ada_out[1]):   # conditions visibly reach the chunk
            lin.weight.normal_(0, 0.2)
    return p


def _images(n=2, seed=0, size=80):
    return (np.random.default_rng(seed).random((n, size, size, 3)) * 255).astype(np.uint8)


def test_save_load_reproduces_identical_plans_without_pickle(tmp_path):
    p = _policy()
    imgs, state = _images(), np.array([0.1, -0.2, 0.3])
    a = p.plan(imgs, INSTR, state=state)
    p.save_pretrained(tmp_path / "ckpt")
    files = sorted(f.relative_to(tmp_path / "ckpt").as_posix() for f in (tmp_path / "ckpt").rglob("*") if f.is_file())
    assert {"config.json", "model.safetensors", "norm_stats.json", "latent_tokenizer/model.safetensors",
            "latent_tokenizer/config.json"} <= set(files)
    assert any(f.startswith("tokenizer/") for f in files)
    for f in files:
        assert Path(f).suffix in (".json", ".safetensors", ".jinja", ".txt"), f
        assert not (tmp_path / "ckpt" / f).read_bytes()[:2] == b"\x80\x04", f"pickle data in {f}"
    q = SemanticVLAPolicy.from_pretrained(tmp_path / "ckpt")
    b = q.plan(imgs, INSTR, state=state)
    assert a.texts == b.texts
    np.testing.assert_array_equal(a.anchors, b.anchors)
    np.testing.assert_array_equal(a.latent_ids, b.latent_ids)
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.latent_hidden, b.latent_hidden)
    assert q.codebook_version == p.codebook_version
    # a different seed gives a different chunk (the noise matters), the same seed the same chunk
    assert not np.allclose(q.plan(imgs, INSTR, state=state, seed=1).actions, b.actions)


def test_codebook_version_mismatch_is_refused(tmp_path):
    p = _policy()
    p.save_pretrained(tmp_path / "ckpt")
    cfg = tmp_path / "ckpt" / "config.json"
    meta = json.loads(cfg.read_text())
    meta["codebook_version"] = "lat-0000000000000000"
    cfg.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="codebook version"):
        SemanticVLAPolicy.from_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="not a policy checkpoint"):
        SemanticVLAPolicy.from_pretrained(tmp_path / "nothing")


def test_plan_outputs_timings_and_units():
    p = _policy()
    plan = p.plan(_images(), INSTR, state=np.zeros(3))
    B, H, D = 2, p.config.horizon, p.config.action_dim
    assert plan.actions.shape == (B, H, D) and plan.anchors.shape == (B, 4, 2) and plan.latent_ids.shape == (B, 4)
    assert all(plan.parse_ok) and len(plan.texts) == B
    assert plan.latent_hidden.shape == (B, 4, p.vlm.hidden_size)
    assert plan.visual_features.shape[0] == B
    for k in ("vision", "prefill", "decode", "decode_per_token", "latent_hidden", "flow", "total"):
        assert k in plan.timings and plan.timings[k] >= 0, k
    assert plan.timings["total"] >= plan.timings["flow"] + plan.timings["prefill"]
    # robot units = the norm stats' unnormalization of what the decoder produced
    np.testing.assert_allclose(plan.actions, p.norm_stats.action.unnormalize(plan.actions_normalized), rtol=1e-5,
                               atol=1e-7)
    assert np.abs(plan.actions).max() < np.abs(plan.actions_normalized).max()   # stats scale ~0.02
    assert plan.image_size == (80, 80)
    tp = plan.trace_plan(1)
    assert isinstance(tp, TracePlan) and tp.instruction == INSTR[1]


def test_split_api_matches_plan():
    p = _policy()
    imgs, state = _images(), np.array([0.5, 0.0, -0.5])
    plan = p.plan(imgs, INSTR, state=state)
    tps = p.plan_trace(imgs, INSTR)
    assert isinstance(tps, list) and len(tps) == 2
    for b, tp in enumerate(tps):
        assert tp.raw_text == plan.texts[b] and tp.parse_ok
        chunk = p.decode_actions(tp, state=state)
        assert isinstance(chunk, ActionChunkData) and chunk.dt == p.config.control_dt
        np.testing.assert_allclose(chunk.actions, plan.actions[b], rtol=1e-5, atol=1e-6)
    single = p.plan_trace(imgs[0], INSTR[0])
    assert isinstance(single, TracePlan)



def test_tcp_pose_action_frame_plans_ee_deltas_through_the_predicted_targets():
    """action_frame="tcp_pose": the decoder's rows are TCP targets (15-D state representation); plan() and
    decode_actions() turn them into the ee_delta steps through them from the given state, and refuse to go
    without a state."""
    from semanticvla_core.robot_state import STATE_DIM, deltas_to_tcp_targets, tcp_targets_to_deltas

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    targets = np.concatenate([rng.uniform([0.35, -0.25, 0.05], [0.65, 0.25, 0.3], (200, 3)),
                              rng.normal(0, 0.01, (200, 2)), rng.uniform(-0.7, 0.7, (200, 1)),
                              rng.integers(0, 2, (200, 1))], axis=1)
    st = DatasetStats(action=NormStats.compute(targets), state=NormStats.compute(rng.normal(0, 0.3, (200, STATE_DIM))))
    p = SemanticVLAPolicy(tiny_config(state_dim=STATE_DIM, action_frame="tcp_pose"), text_tokenizer=text_tokenizer(),
                          norm_stats=st).eval()
    with torch.no_grad():
        for lin in (p.decoder.action_out, p.decoder.ada_out[1]):
            lin.weight.normal_(0, 0.2)
    state = np.zeros(STATE_DIM)
    state[9:12], state[12:15] = [0.5, 0.05, 0.25], [0.0, 0.0, 0.3]
    imgs = _images()
    plan = p.plan(imgs, INSTR, state=state)
    for b in range(2):
        want = tcp_targets_to_deltas(state, st.action.unnormalize(plan.actions_normalized[b].astype(np.float64)))
        np.testing.assert_allclose(plan.actions[b], want, atol=1e-6)
        # stepping the deltas from the state passes through the decoder's targets
        np.testing.assert_allclose(deltas_to_tcp_targets(state, plan.actions[b])[:, :6],
                                   st.action.unnormalize(plan.actions_normalized[b].astype(np.float64))[:, :6],
                                   atol=1e-5)
        # the first step goes from the state's TCP to the first target
        np.testing.assert_allclose(plan.actions[b, 0, :3], st.action.unnormalize(
            plan.actions_normalized[b].astype(np.float64))[0, :3] - state[9:12], atol=1e-6)
    chunk = p.decode_actions(p.plan_trace(imgs[0], INSTR[0]), state=state)
    np.testing.assert_allclose(chunk.actions, plan.actions[0], atol=1e-5)
    with pytest.raises(ValueError, match="robot state"):
        p.plan(imgs, INSTR)
    with pytest.raises(ValueError, match="action_frame"):
        tiny_config(action_frame="absolute")



def test_noise_scale_zero_plans_one_central_chunk_whatever_the_seed():
    """config.noise_scale scales the flow's initial noise at run time: 0 starts every chunk from the noise's
    mean, so the seed no longer matters and the chunk is the ODE's image of zero; 1 is the trained sampling."""
    p = _policy()
    imgs, state = _images(), np.array([0.1, -0.2, 0.3])
    noisy = [p.plan(imgs, INSTR, state=state, seed=s).actions for s in (0, 1)]
    assert not np.allclose(noisy[0], noisy[1])
    p.config.noise_scale = 0.0
    a, b = (p.plan(imgs, INSTR, state=state, seed=s).actions for s in (0, 1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, noisy[0])
    tp = p.plan_trace(imgs[0], INSTR[0])
    np.testing.assert_allclose(p.decode_actions(tp, state=state, seed=7).actions, a[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="noise_scale"):
        tiny_config(noise_scale=-1.0)


def _decode_with_anchors(p, tp, anchors):
    tp2 = TracePlan(**{**tp.__dict__, "anchors": np.asarray(anchors, np.float32)})
    return p.decode_actions(tp2).actions


def test_switches_change_what_they_claim():
    imgs = _images(1)[0]
    full = _policy()
    assert set(full.decoder.cond_proj) == {"e_tau", "e_a", "e_v", "state"}
    tp = full.plan_trace(imgs, INSTR[0])
    other = np.array([[0.1, 0.1], [0.2, 0.2], [0.3, 0.3], [0.9, 0.9]])
    assert not np.allclose(_decode_with_anchors(full, tp, tp.anchors), _decode_with_anchors(full, tp, other))

    no_e_tau = _policy(trace_to_decoder=False)
    assert "e_tau" not in no_e_tau.decoder.cond_proj
    tp = no_e_tau.plan_trace(imgs, INSTR[0])
    np.testing.assert_array_equal(_decode_with_anchors(no_e_tau, tp, tp.anchors),
                                  _decode_with_anchors(no_e_tau, tp, other))
    assert tp.raw_text.startswith("[[")          # the VLM still writes the trace

    no_latent = _policy(use_latent=False)
    assert "e_a" not in no_latent.decoder.cond_proj
    plan = no_latent.plan(imgs, INSTR[0])
    assert "<ACT_" not in plan.texts[0] and plan.latent_ids.shape == (1, 0) and all(plan.parse_ok)
    assert no_latent.plan_trace(imgs, INSTR[0]).latent_hidden.shape == (0, no_latent.vlm.hidden_size)

    no_trace = _policy(use_trace=False)
    assert "e_tau" not in no_trace.decoder.cond_proj
    plan = no_trace.plan(imgs, INSTR[0])
    assert plan.texts[0].startswith("<ACT_") and plan.latent_ids.shape == (1, 4)
    np.testing.assert_array_equal(plan.anchors[0], [[0.5, 0.5]])      # no trace: the image centre


MODES = {"full": {}, "no_trace": dict(use_trace=False), "no_latent": dict(use_latent=False),
         "conventional": dict(use_trace=False, use_latent=False)}


@pytest.mark.parametrize("mode", list(MODES))
def test_all_four_variants_plan_split_and_round_trip(mode, tmp_path):
    """Each comparison variant builds, plan() and plan_trace()+decode_actions() agree (also through the
    Plan's own TracePlan), and a save/load round trip reproduces the plan exactly."""
    p = _policy(**MODES[mode])
    c = p.config
    imgs, state = _images(), np.array([0.5, 0.0, -0.5])
    plan = p.plan(imgs, INSTR, state=state)
    tps = p.plan_trace(imgs, INSTR)
    K, d, M = c.num_latent_tokens, p.vlm.hidden_size, p.vlm.num_visual_tokens
    for b, tp in enumerate(tps):
        assert tp.parse_ok and tp.raw_text == plan.texts[b] and tp.anchors.shape[0] >= 1
        for t in (tp, plan.trace_plan(b)):
            np.testing.assert_allclose(p.decode_actions(t, state=state).actions, plan.actions[b], rtol=1e-5, atol=1e-6)
        if not c.use_trace:
            np.testing.assert_array_equal(tp.anchors, [[0.5, 0.5]])
        if c.vlm_generates:
            assert tp.latent_hidden.shape == ((K, d) if c.use_latent else (0, d)) and tp.visual_features.shape == (M, d)
        else:   # conventional: nothing generated; the K prompt states travel after the M E_v rows
            assert tp.raw_text == "" and tp.latent_ids.shape == (0,) and tp.latent_hidden.shape == (0, d)
            assert tp.visual_features.shape == (M + K, d)
            np.testing.assert_allclose(tp.visual_features[M:], plan.latent_hidden[b], rtol=1e-5, atol=1e-6)
    assert plan.latent_hidden.shape == (2, K if c.decoder_uses_e_a else 0, d)
    if not c.vlm_generates:
        assert plan.texts == ["", ""] and plan.timings["decode"] == 0.0 and plan.latent_ids.shape == (2, 0)
    p.save_pretrained(tmp_path / "ckpt")
    q = SemanticVLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert (q.config.use_trace, q.config.use_latent) == (c.use_trace, c.use_latent)
    again = q.plan(imgs, INSTR, state=state)
    assert again.texts == plan.texts
    np.testing.assert_array_equal(again.actions, plan.actions)
    np.testing.assert_array_equal(again.latent_hidden, plan.latent_hidden)


def _memory_len(p, tp) -> int:
    vis, e_a = tp.visual_features, tp.latent_hidden
    if p.config.decoder_uses_prompt_states:
        vis, e_a = vis[:p.vlm.num_visual_tokens], vis[p.vlm.num_visual_tokens:]
    cond = p.decoder_conditions(tp.anchors[None], torch.as_tensor(e_a)[None], torch.as_tensor(vis)[None],
                                torch.zeros(1, 3))
    cond.pop("image_age")                         # (not a memory group: the adaLN conditioning reads it)
    memory, _ = p.decoder.build_memory(**cond)
    return memory.shape[1]


def test_each_switch_changes_the_decoder_inputs():
    imgs = _images(1)[0]
    lens = {}
    for mode, kw in MODES.items():
        p = _policy(**kw)
        lens[mode] = _memory_len(p, p.plan_trace(imgs, INSTR[0]))
    full = _policy()
    t_tau = full.anchors_to_e_tau(np.full((1, 4, 2), 0.5, np.float32)).shape[1]
    K, M = full.config.num_latent_tokens, full.vlm.num_visual_tokens
    assert lens == {"full": t_tau + K + M + 1, "no_trace": K + M + 1, "no_latent": t_tau + M + 1,
                    "conventional": K + M + 1}


def test_conventional_variant_e_a_is_the_prompt_and_reaches_the_actions():
    """Both switches off: E_a = the last K prompt states (teacher-forced forward == plan), the
    instruction changes E_a and through it the chunk, and editing the packed E_a rows of a TracePlan
    changes decode_actions."""
    p = _policy(use_trace=False, use_latent=False)
    assert p.vlm.grammar is None and p.vlm.num_prompt_states == p.config.num_latent_tokens
    imgs = _images()
    plan = p.plan(imgs, INSTR)
    from semanticvla_core.policy import preprocess_images
    with torch.no_grad():
        out = p.vlm(preprocess_images(imgs, 64), INSTR)     # the same image path plan() takes
    assert float(out.loss) == 0.0
    torch.testing.assert_close(out.latent_hidden, torch.from_numpy(plan.latent_hidden), rtol=1e-4, atol=1e-4)
    other = p.plan(imgs, ["wipe the table", "open the drawer"])
    assert not np.allclose(other.latent_hidden[0], plan.latent_hidden[0])
    np.testing.assert_allclose(other.latent_hidden[1], plan.latent_hidden[1], rtol=1e-4, atol=1e-5)
    assert not np.allclose(other.actions[0], plan.actions[0])
    tp = plan.trace_plan(0)
    vis = tp.visual_features.copy()
    vis[p.vlm.num_visual_tokens:] += 1.0
    moved = p.decode_actions(TracePlan(**{**tp.__dict__, "visual_features": vis})).actions
    assert not np.allclose(moved, p.decode_actions(tp).actions)
    with pytest.raises(ValueError, match="visual_features"):
        p.decode_actions(TracePlan(**{**tp.__dict__, "visual_features": vis[:p.vlm.num_visual_tokens]}))


def test_decoder_side_switches_can_change_on_load(tmp_path):
    full = _policy()
    full.save_pretrained(tmp_path / "ckpt")
    q = SemanticVLAPolicy.from_pretrained(tmp_path / "ckpt", config_overrides={"use_latent": False})
    assert not q.config.use_latent and "e_a" not in q.decoder.cond_proj
    for k, v in full.vlm.state_dict().items():          # the VLM weights came over unchanged
        assert torch.equal(v, q.vlm.state_dict()[k]), k
    assert "<ACT_" not in q.plan(_images(1)[0], INSTR[0]).texts[0]
    with pytest.raises(ValueError, match="use_trace"):
        SemanticVLAPolicy.from_pretrained(tmp_path / "ckpt", config_overrides={"use_trace": False})


def test_lora_trains_only_the_intended_parameters():
    p = _policy()
    r = 4
    p.apply_lora(r=r, alpha=8)
    p.decoder.requires_grad_(True)
    lm = p.config.vlm.lm_config
    h, inter = lm["hidden_size"], lm["intermediate_size"]
    kv = h // lm["num_attention_heads"] * lm["num_key_value_heads"]
    per_layer = r * ((h + h) + (h + kv) + (h + kv) + (h + h) + 2 * (h + inter) + (inter + h))
    expected_lora = lm["num_hidden_layers"] * per_layer
    from semanticvla_core.training.stage3_e2e import trainable_parameter_report
    counts = trainable_parameter_report(p)
    assert counts == {"lora": expected_lora, "vision_lora": 0, "act_tokens": CODEBOOK * h,
                      "decoder": sum(x.numel() for x in p.decoder.parameters()), "stem": 0, "projector": 0,
                      "other": 0}
    lora_names = [n for n, x in p.named_parameters() if x.requires_grad and "lora_" in n]
    assert lora_names and all(".towers." not in n and "projector" not in n for n in lora_names)

    before = {k: v.clone() for k, v in p.state_dict().items()}
    emb_before = p.vlm.backbone.lm.get_input_embeddings()
    opt = torch.optim.AdamW([x for x in p.parameters() if x.requires_grad], lr=1e-2, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    batch = dict(image=torch.rand(2, 3, 64, 64, generator=g), instruction=INSTR, anchors=torch.rand(2, 4, 2, generator=g),
                 latent_ids=torch.randint(0, CODEBOOK, (2, 4), generator=g), actions=torch.randn(2, 8, 7, generator=g),
                 actions_pad=torch.zeros(2, 8, dtype=torch.bool), state=torch.randn(2, 3, generator=g))
    p.train()
    for _ in range(3):
        loss = p(batch, lambda_vlm=0.5)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    p.eval()
    after = p.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing trained"
    for k in changed:
        assert "lora_" in k or "trainable_tokens" in k or k.startswith("decoder."), f"{k} changed"
    with torch.no_grad():
        logits_lora = p.vlm(batch["image"], INSTR, batch["anchors"], batch["latent_ids"]).loss
    base_key = [k for k in before if k.endswith("embed_tokens.token_adapter.base_layer.weight")][0]
    p.merge_lora()
    assert not any("lora_" in n or "trainable_tokens" in n for n, _ in p.named_parameters())
    with torch.no_grad():
        logits_merged = p.vlm(batch["image"], INSTR, batch["anchors"], batch["latent_ids"]).loss
    torch.testing.assert_close(logits_lora, logits_merged, rtol=1e-4, atol=1e-4)
    emb = p.vlm.backbone.lm.get_input_embeddings().weight
    act = torch.tensor(p.vlm.grammar.act_ids)
    other = torch.ones(emb.shape[0], dtype=torch.bool)
    other[act] = False
    assert torch.equal(emb[other], before[base_key][other])              # old vocabulary rows untouched
    assert not torch.allclose(emb[act], before[base_key][act])            # the <ACT_k> rows trained
    del emb_before


def test_conventional_variant_trains_vision_lm_and_decoder_through_the_flow_loss(tmp_path):
    """Both switches off: L_VLM is 0, yet the flow loss trains the LM LoRA (through the prompt-state E_a),
    the vision-tower LoRA and the projector (through E_v and the LM); merged, it saves and reloads."""
    from semanticvla_core.training.stage3_e2e import trainable_parameter_report
    p = _policy(use_trace=False, use_latent=False)
    p.apply_lora(r=2, alpha=4, train_act_tokens=False, vision=True)
    p.decoder.requires_grad_(True)
    counts = trainable_parameter_report(p)
    assert counts["lora"] > 0 and counts["vision_lora"] > 0 and counts["projector"] > 0
    assert counts["other"] == 0 and counts["act_tokens"] == 0
    before = {k: v.clone() for k, v in p.state_dict().items()}
    opt = torch.optim.AdamW([x for x in p.parameters() if x.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(0)
    batch = dict(image=torch.rand(2, 3, 64, 64, generator=g), instruction=INSTR,
                 actions=torch.randn(2, 8, 7, generator=g), actions_pad=torch.zeros(2, 8, dtype=torch.bool),
                 state=torch.randn(2, 3, generator=g))
    p.train()
    for _ in range(2):
        out = p(batch)
        assert float(out["loss_vlm"]) == 0.0
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    p.eval()
    changed = {k for k, v in p.state_dict().items() if not torch.equal(before[k], v)}
    assert any(".towers." in k and "lora_" in k for k in changed)
    assert any(".lm." in k and "lora_" in k for k in changed)
    assert any(".projector." in k for k in changed) and any(k.startswith("decoder.") for k in changed)
    p.merge_lora()
    assert not any("lora_" in n for n, _ in p.named_parameters())
    imgs = _images()
    plan = p.plan(imgs, INSTR, state=np.zeros(3))
    p.save_pretrained(tmp_path / "ckpt")
    np.testing.assert_array_equal(SemanticVLAPolicy.from_pretrained(tmp_path / "ckpt").plan(
        imgs, INSTR, state=np.zeros(3)).actions, plan.actions)


def test_cpu_bfloat16_runtime():
    p = _policy().to_runtime("cpu", torch.bfloat16)
    assert next(p.vlm.parameters()).dtype == torch.bfloat16 and p.decoder.pos.dtype == torch.float32
    plan = p.plan(_images(1), INSTR[0], state=np.zeros(3))
    assert all(plan.parse_ok) and np.isfinite(plan.actions).all()


def test_bad_inputs_raise_clear_errors():
    p = _policy()
    with pytest.raises(ValueError, match="instruction"):
        p.plan(_images(2), ["a", "b", "c"])
    with pytest.raises(ValueError, match="state"):
        p.plan(_images(1), "a", state=np.zeros(5))
    with pytest.raises(ValueError, match="images"):
        p.plan(np.zeros((4, 4), np.uint8), "a")


def test_a_decoder_gains_the_image_age_on_load_and_keeps_its_weights(tmp_path):
    """config_overrides switching image_age_cond on (the start of a delay fine-tune): the stored decoder is kept,
    its new image-age input starts at zero, so the chunks are the same as before at any age until it is trained;
    the policy passes the age through plan() and decode_actions()."""
    p = _policy()
    p.save_pretrained(tmp_path / "ckpt")
    dec = {**json.loads((tmp_path / "ckpt" / "config.json").read_text())["config"]["decoder"], "image_age_cond": True}
    q = SemanticVLAPolicy.from_pretrained(tmp_path / "ckpt", config_overrides={"decoder": dec})
    assert q.decoder.config.image_age_cond and q.decoder.age_mlp is not None
    for k, v in p.decoder.state_dict().items():
        assert torch.equal(v, q.decoder.state_dict()[k]), k
    imgs, state = _images(1), np.array([0.1, -0.2, 0.3])
    a = p.plan(imgs, INSTR[0], state=state).actions
    np.testing.assert_array_equal(q.plan(imgs, INSTR[0], state=state, image_age=4).actions, a)
    with torch.no_grad():                        # trained: the age changes the chunk, in both entry points
        q.decoder.age_mlp[2].weight.normal_(0, 0.5)
    tp = q.plan_trace(imgs[0], INSTR[0])
    fresh, old = (q.decode_actions(tp, state, image_age=k).actions for k in (0, 4))
    assert not np.allclose(fresh, old)
    np.testing.assert_array_equal(q.plan(imgs, INSTR[0], state=state, image_age=4).actions[0], old)
    q.save_pretrained(tmp_path / "aged")         # and it round-trips with the age input
    r = SemanticVLAPolicy.from_pretrained(tmp_path / "aged")
    np.testing.assert_array_equal(r.decode_actions(tp, state, image_age=4).actions, old)
