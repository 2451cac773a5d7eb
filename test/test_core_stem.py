"""The decoder's visual stem (keypoint CNN on the full-resolution agent view + wrist camera): spatial
softmax geometry, the policy paths that carry its tokens (plan, plan_trace -> decode_actions, save/load,
adding it to a stem-less checkpoint for stage 3), and that it learns where a target is."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core_model_fixtures import text_tokenizer, tiny_config
from semanticvla_core.model.visual_stem import SpatialSoftmax, VisualStem, VisualStemConfig, random_shift
from semanticvla_core.normalize import DatasetStats, NormStats
from semanticvla_core.policy import SemanticVLAPolicy

torch.set_num_threads(1)
STEM = {"image_size": 48, "wrist_size": 32, "channels": 8, "keypoints": 4, "shift_pad": 2}


def _policy(stem=STEM, seed=0) -> SemanticVLAPolicy:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    st = DatasetStats(action=NormStats.compute(rng.normal(0, 0.02, (200, 7))),
                      state=NormStats.compute(rng.normal(0, 1, (200, 3))))
    p = SemanticVLAPolicy(tiny_config(state_dim=3, stem=stem), text_tokenizer=text_tokenizer(), norm_stats=st).eval()
    with torch.no_grad():
        for lin in (p.decoder.action_out, p.decoder.ada_out[1]):
            lin.weight.normal_(0, 0.2)
    return p


def _imgs(n, size, seed=0):
    return (np.random.default_rng(seed).random((n, size, size, 3)) * 255).astype(np.uint8)


def test_spatial_softmax_finds_a_peak():
    maps = torch.full((1, 2, 20, 30), -10.0)
    maps[0, 0, 5, 25] = 10.0      # row 5, column 25
    maps[0, 1, 19, 0] = 10.0
    xy = SpatialSoftmax()(maps)[0].detach()
    np.testing.assert_allclose(xy[0].numpy(), [-1 + 2 * 25 / 29, -1 + 2 * 5 / 19], atol=1e-3)
    np.testing.assert_allclose(xy[1].numpy(), [-1.0, 1.0], atol=1e-3)


def test_random_shift_moves_content_by_at_most_pad():
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    y = random_shift(x, 3, torch.Generator().manual_seed(0))
    pos = torch.stack([torch.nonzero(im[0])[0] for im in y])
    d = (pos - 8).abs()
    assert d.max() <= 3 and d.float().std() > 0.5     # shifted, randomly, within the pad


def test_config_validation_and_token_count():
    assert not VisualStemConfig().enabled and VisualStemConfig().num_tokens == 0
    assert VisualStemConfig(64, 32, keypoints=5).num_tokens == 2 * 6
    assert VisualStemConfig(64, 0, keypoints=5).cameras == ("agentview",)
    with pytest.raises(ValueError, match="16 px"):
        VisualStemConfig(8)
    with pytest.raises(ValueError, match="stem off"):
        VisualStem(VisualStemConfig(), 16)
    s = VisualStem(VisualStemConfig(**STEM), 16)
    ctx = torch.rand(1, 16)
    with pytest.raises(ValueError, match="prompt context"):
        s(torch.rand(1, 3, 48, 48), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="wrist image is required"):
        s(torch.rand(1, 3, 48, 48), None, ctx)
    with pytest.raises(ValueError, match=r"agentview image must be \(B, 3, 48, 48\)"):
        s(torch.rand(1, 3, 40, 40), torch.rand(1, 3, 32, 32), ctx)


def test_policy_with_stem_plans_splits_saves_and_loads(tmp_path):
    p = _policy()
    assert p.num_decoder_visual_tokens == p.vlm.num_visual_tokens + 2 * (STEM["keypoints"] + 1)
    agent, wrist, state = _imgs(1, 96), _imgs(1, 64, 1), np.array([0.1, -0.2, 0.3])
    with pytest.raises(ValueError, match="wrist"):
        p.plan(agent, "pick up the red block", state=state)
    a = p.plan(agent, "pick up the red block", state=state, wrist=wrist)
    assert a.visual_features.shape[1] == p.num_decoder_visual_tokens
    tp = p.plan_trace(agent[0], "pick up the red block", wrist=wrist[0])
    np.testing.assert_allclose(p.decode_actions(tp, state=state).actions, a.actions[0], atol=1e-5)
    # the wrist image reaches the actions
    b = p.plan(agent, "pick up the red block", state=state, wrist=_imgs(1, 64, 7))
    assert not np.allclose(a.actions, b.actions)
    p.save_pretrained(tmp_path / "ckpt")
    q = SemanticVLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert q.config.stem == p.config.stem
    np.testing.assert_array_equal(q.plan(agent, "pick up the red block", state=state, wrist=wrist).actions, a.actions)


def test_decoder_global_conditioning_reads_the_stem_rows_on_every_path(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(state_dim=3, stem=STEM, decoder={"d_model": 32, "n_layers": 1, "n_heads": 2, "global_cond": True})
    p = _policy()
    p = SemanticVLAPolicy(cfg, text_tokenizer=text_tokenizer(), norm_stats=p.norm_stats).eval()
    assert p.decoder.config.global_tokens == p.config.stem.num_tokens == 2 * (STEM["keypoints"] + 1)
    with torch.no_grad():
        for lin in (p.decoder.action_out, p.decoder.global_mlp[2]):
            lin.weight.normal_(0, 0.3)
    agent, wrist, state = _imgs(1, 96), _imgs(1, 64, 1), np.array([0.1, -0.2, 0.3])
    a = p.plan(agent, "pick up the red block", state=state, wrist=wrist)
    tp = p.plan_trace(agent[0], "pick up the red block", wrist=wrist[0])
    np.testing.assert_allclose(p.decode_actions(tp, state=state).actions, a.actions[0], atol=1e-5)
    assert a.keypoints is None                                        # no language keypoints in this stem
    p.save_pretrained(tmp_path / "gc")
    q = SemanticVLAPolicy.from_pretrained(tmp_path / "gc")
    assert q.decoder.config.global_cond and q.decoder.global_mlp is not None
    np.testing.assert_array_equal(q.plan(agent, "pick up the red block", state=state, wrist=wrist).actions, a.actions)


def test_stem_can_be_added_to_a_stemless_checkpoint(tmp_path):
    p = _policy(stem={})
    assert p.stem is None
    p.save_pretrained(tmp_path / "s2")
    q = SemanticVLAPolicy.from_pretrained(tmp_path / "s2", config_overrides={"stem": STEM})
    assert q.stem is not None
    for k, v in p.vlm.state_dict().items():
        assert torch.equal(v, q.vlm.state_dict()[k]), k
    q.save_pretrained(tmp_path / "s3")
    r = SemanticVLAPolicy.from_pretrained(tmp_path / "s3")
    for k, v in q.stem.state_dict().items():
        assert torch.equal(v, r.stem.state_dict()[k]), k


def test_stem_learns_where_a_bright_square_is():
    """Regress the (x, y) of a 3x3 white square on a noisy background from the keypoint tokens; a
    held-out error far below the guess-the-mean baseline shows the tokens carry pixel positions."""
    torch.manual_seed(0)
    cfg = VisualStemConfig(image_size=32, channels=8, keypoints=4, shift_pad=0, film=False)
    stem, head = VisualStem(cfg, 16), torch.nn.Linear(16 * cfg.num_tokens, 2)
    opt = torch.optim.Adam([*stem.parameters(), *head.parameters()], 3e-3)

    def batch(n, g):
        x = torch.rand(n, 3, 32, 32, generator=g) * 0.3
        pos = torch.randint(2, 30, (n, 2), generator=g)
        for i, (r, c) in enumerate(pos.tolist()):
            x[i, :, r - 1:r + 2, c - 1:c + 2] = 1.0
        return x, (pos.float() - 16) / 16

    g = torch.Generator().manual_seed(1)
    stem.train()
    for _ in range(300):
        x, y = batch(32, g)
        loss = (head(stem(x).flatten(1)) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    stem.eval()
    x, y = batch(256, torch.Generator().manual_seed(2))
    with torch.no_grad():
        err = (head(stem(x).flatten(1)) - y).pow(2).mean().item()
    baseline = (y - y.mean(0)).pow(2).mean().item()
    assert err < 0.1 * baseline, (err, baseline)


def _two_squares(n, g, with_pos=False):
    """Two 3x3 squares (red, blue) at random places on a dark noisy image; ``which`` names one; ``y`` its (x, y);
    ``with_pos``: also both squares' centre pixels (n, 2, 2) as (row, col)."""
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.2
    pos = torch.randint(2, 30, (n, 2, 2), generator=g)
    which = torch.randint(0, 2, (n,), generator=g)
    for i in range(n):
        for k, ch in ((0, 0), (1, 2)):      # square 0 red, square 1 blue
            r, c = pos[i, k].tolist()
            x[i, ch, r - 1:r + 2, c - 1:c + 2] = 1.0
    y = (pos[torch.arange(n), which].float() - 16) / 16
    return (x, which, y, pos) if with_pos else (x, which, y)


def _named_square_error(film: bool, condition, **cfg) -> float:
    """Train a stem + linear head for 400 steps to report the named square; held-out MSE.
    ``condition(which) -> (context, instructions)`` is how the name reaches the stem (with ``film``)."""
    torch.manual_seed(0)
    stem = VisualStem(VisualStemConfig(image_size=32, channels=8, keypoints=4, shift_pad=0, film=film, **cfg), 16)
    head = torch.nn.Linear(16 * stem.config.num_tokens, 2)
    opt = torch.optim.Adam([p for p in [*stem.parameters(), *head.parameters()] if p.requires_grad], 3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(400):
        x, which, y = _two_squares(32, g)
        loss = (head(stem(x, None, *(condition(which) if film else (None, None))).flatten(1)) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, which, y = _two_squares(256, torch.Generator().manual_seed(2))
    with torch.no_grad():
        return (head(stem(x, None, *(condition(which) if film else (None, None))).flatten(1)) - y).pow(2).mean().item()


def test_film_context_selects_which_square_the_keypoints_report():
    """Two squares (red, blue) at random places; a context vector names one (as the VLM's prompt state
    names the instructed cube). With FiLM the stem's tokens give the NAMED square's position; without
    the context the best a model can do is about halfway between the two."""
    def one_hot(which):
        return torch.nn.functional.one_hot(which, 16).float(), None

    with_film, without = _named_square_error(True, one_hot), _named_square_error(False, one_hot)
    assert with_film < 0.5 * without, (with_film, without)


def test_prompt_context_is_the_same_in_training_and_generation():
    """The FiLM context the stem gets in training (teacher-forced forward) is the state generation computes
    at run time (left-padded batch of prompts of different lengths)."""
    p = _policy()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    instr = ["pick up the red block", "put the small blue cube on the green plate please"]
    gen = p.vlm.generate(x, instr)
    out = p.vlm(x, instr, torch.rand(2, 4, 2), torch.randint(0, 32, (2, 4)))
    torch.testing.assert_close(out.prompt_context, gen.prompt_context, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out.prompt_context[0], out.prompt_context[1])


SENT_STEM = {**STEM, "language": "sentence"}


def test_sentence_language_reads_the_instruction_and_is_not_saved(tmp_path):
    """language="sentence": the FiLM vector comes from the frozen all-MiniLM-L6-v2 token states (an attention
    pool trained with the stem). Different instructions -> different actions; the encoder's token states are
    order-aware ("blue cube on the orange plate" vs "orange cube on the blue plate"); its weights are not in
    the checkpoint and a reload gives the same actions."""
    from safetensors import safe_open

    p = _policy(stem=SENT_STEM)
    with torch.no_grad():          # FiLM starts at zero (unconditioned): give it weights to see the path
        for cam in p.stem.cams.values():
            cam.film.weight.normal_(0, 0.5)
    a_txt, b_txt = "put the blue cube on the orange plate", "put the orange cube on the blue plate"
    h, m = p.stem.sentence.token_states([a_txt, b_txt])
    assert m.sum(1).tolist() == [m.shape[1]] * 2 and not torch.allclose(h[0], h[1], atol=1e-3)
    assert set(p.stem.sentence._cache) == {a_txt, b_txt}          # read once, then cached
    agent, wrist, state = _imgs(1, 96), _imgs(1, 64, 1), np.zeros(3)
    a = p.plan(agent, a_txt, state=state, wrist=wrist)
    b = p.plan(agent, b_txt, state=state, wrist=wrist)
    assert not np.allclose(a.actions, b.actions)
    p.save_pretrained(tmp_path / "ckpt")
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    stem_keys = [k for k in keys if k.startswith("stem.")]
    assert "stem.sentence.query" in stem_keys and not any("bert" in k or "encoder" in k for k in stem_keys)
    assert sum(k.startswith("stem.sentence.") for k in stem_keys) == 7     # query, key (2), out (2 x 2)
    q = SemanticVLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert q.config.stem.language == "sentence"
    np.testing.assert_allclose(q.plan(agent, a_txt, state=state, wrist=wrist).actions, a.actions, atol=1e-6)
    with pytest.raises(ValueError, match="instructions"):
        p.stem(torch.rand(1, 3, 48, 48), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="language"):
        VisualStemConfig(image_size=48, language="bag-of-words")


def test_sentence_film_learns_which_named_square_to_report():
    """As the FiLM test above, but the square is named in words, in either order ("the red cube on the blue
    plate" / "the blue cube on the red plate"): the attention pool over the frozen encoder's token states must
    learn that the first colour counts. Without FiLM the error stays near the halfway guess."""
    texts = {0: ["put the red cube on the blue plate", "move the red block onto the blue plate"],
             1: ["put the blue cube on the red plate", "move the blue block onto the red plate"]}

    def words(which):
        return None, [texts[int(w)][i % 2] for i, w in enumerate(which)]

    with_film = _named_square_error(True, words, language="sentence")
    without = _named_square_error(False, words, language="sentence")
    assert with_film < 0.5 * without, (with_film, without)


def test_random_shift_reports_how_far_the_content_moved():
    x = torch.zeros(6, 3, 20, 20)
    x[:, :, 10, 7] = 1.0                                              # one bright pixel at (x 7, y 10)
    y, moved = random_shift(x, 3, torch.Generator().manual_seed(0), return_offsets=True)
    for b in range(6):
        r, c = divmod(int(y[b, 0].argmax()), 20)
        assert (c, r) == (7 + int(moved[b, 0]), 10 + int(moved[b, 1]))
    assert moved.abs().max() <= 3 and len({tuple(m.tolist()) for m in moved}) > 1


def test_plan_reports_the_language_keypoints():
    p = _policy(stem={**STEM, "lang_keypoints": 2})
    agent, wrist = _imgs(2, 96), _imgs(2, 64, 1)
    a = p.plan(agent, "pick up the red block", state=np.zeros((2, 3)), wrist=wrist)
    assert a.keypoints.shape == (2, 2, 2) and (a.keypoints >= 0).all() and (a.keypoints <= 1).all()
    b = p.plan(agent, "pick up the blue block", state=np.zeros((2, 3)), wrist=wrist)
    assert not np.allclose(a.keypoints, b.keypoints)                  # they follow the instruction



def test_keypoint_loss_covers_the_wrist_camera_when_its_targets_are_given():
    """_add_keypoint_loss: the agent view's targets always, the wrist view's when the batch has
    plan_wrist_keypoint_uv / _valid (ActionDataset.keypoint_targets with a wrist mount); each is the mean squared
    distance over valid targets, and an invalid target contributes nothing."""
    p = _policy(stem={**STEM, "lang_keypoints": 2})
    p.plan(_imgs(2, 96), "pick up the red block", state=np.zeros((2, 3)), wrist=_imgs(2, 64, 1))
    kp = p.stem.last_lang_keypoints
    tgt_a, tgt_w = torch.full((2, 2, 2), 0.5), torch.tensor([[[0.1, 0.9], [0.3, 0.3]], [[0.8, 0.2], [0.0, 0.0]]])
    valid_w = torch.tensor([[True, True], [True, False]])
    batch = {"plan_keypoint_uv": tgt_a, "plan_keypoint_valid": torch.ones(2, 2, dtype=torch.bool)}
    base = {"loss": torch.zeros(())}
    only_agent = p._add_keypoint_loss(base, batch, 2.0)
    assert "loss_wrist_keypoints" not in only_agent
    both = p._add_keypoint_loss(base, {**batch, "plan_wrist_keypoint_uv": tgt_w, "plan_wrist_keypoint_valid": valid_w}, 2.0)
    err = (kp["wrist"][:, :2] - tgt_w).pow(2).sum(-1)
    want = (err * valid_w).sum() / 3
    torch.testing.assert_close(both["loss_wrist_keypoints"], want)
    torch.testing.assert_close(both["loss"], only_agent["loss"] + 2.0 * want)


def test_lang_keypoints_config_and_tokens():
    with pytest.raises(ValueError, match="lang_keypoints"):
        VisualStemConfig(image_size=32, film=False, lang_keypoints=2)
    c = VisualStemConfig(image_size=32, wrist_size=16, keypoints=4, lang_keypoints=2)
    assert c.num_tokens == 2 * (4 + 2 + 1)
    stem = VisualStem(c, 16).eval()
    out = stem(torch.rand(3, 3, 32, 32), torch.rand(3, 3, 16, 16), torch.randn(3, 16))
    assert out.shape == (3, c.num_tokens, 16)
    kp = stem.last_lang_keypoints
    assert set(kp) == {"agentview", "wrist"} and kp["agentview"].shape == (3, 2, 2)
    assert kp["agentview"].min() >= 0 and kp["agentview"].max() <= 1


def test_supervised_lang_keypoint_finds_the_named_square_under_random_shifts():
    """Trace keypoint supervision in miniature: a language-queried keypoint is trained (only) to sit on the
    square the context names, with random-shift augmentation on; held out it lands on the named square,
    not on the other one (the shift is undone in ``last_lang_keypoints``)."""
    torch.manual_seed(0)
    stem = VisualStem(VisualStemConfig(image_size=32, channels=8, keypoints=2, lang_keypoints=1, shift_pad=2), 16)
    opt = torch.optim.Adam(stem.parameters(), 1e-2)
    g = torch.Generator().manual_seed(1)

    def uv_of(pos):                                                  # pixel (row, col) -> normalized (u, v)
        return (pos.flip(-1).float() + 0.5) / 32

    stem.train()
    for _ in range(300):
        x, which, _, pos = _two_squares(32, g, with_pos=True)
        stem(x, None, torch.nn.functional.one_hot(which, 16).float())
        loss = (stem.last_lang_keypoints["agentview"][:, 0] - uv_of(pos[torch.arange(32), which])).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    stem.eval()
    x, which, _, pos = _two_squares(256, torch.Generator().manual_seed(2), with_pos=True)
    with torch.no_grad():
        stem(x, None, torch.nn.functional.one_hot(which, 16).float())
    pred = stem.last_lang_keypoints["agentview"][:, 0] * 32                 # pixels
    named = uv_of(pos[torch.arange(256), which]) * 32
    other = uv_of(pos[torch.arange(256), 1 - which]) * 32
    err, err_other = (pred - named).norm(dim=-1), (pred - other).norm(dim=-1)
    print(f"median px error to the named square {err.median():.2f}, to the other {err_other.median():.2f}")
    assert err.median() < 1.5 and (err < err_other).float().mean() > 0.9
