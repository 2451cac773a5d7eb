"""Flow-matching action decoder: shapes, masks, each condition group, Euler steps, and a learning test."""
import pytest
import torch

from semanticvla_core.model.flow_decoder import FlowDecoderConfig, FlowMatchingDecoder

torch.set_num_threads(1)
H, D, B = 8, 7, 3


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = FlowDecoderConfig(horizon=H, action_dim=D, d_model=32, n_layers=2, n_heads=4, trace_dim=6, latent_dim=10,
                            visual_dim=12, state_dim=9, **kw)
    m = FlowMatchingDecoder(cfg).eval()
    # adaLN-zero makes a fresh model output exactly 0; give the zero-initialised layers random weights
    # so that the conditioning tests below see a generic (trained-like) network
    with torch.no_grad():
        for mod in [m.action_out, m.ada_out[1]] + [b.ada[1] for b in m.blocks]:
            mod.weight.normal_(0, 0.2)
            mod.bias.normal_(0, 0.2)
    return m


def _cond(seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(e_tau=torch.randn(B, 3, 6, generator=g), e_a=torch.randn(B, 4, 10, generator=g),
                e_v=torch.randn(B, 5, 12, generator=g), state=torch.randn(B, 9, generator=g))


def test_shapes_and_loss_and_sample():
    m = _model()
    c = _cond()
    x, t = torch.randn(B, H, D), torch.rand(B)
    assert m(x, t, **c).shape == (B, H, D)
    loss = m.loss(torch.randn(B, H, D), **c)
    assert loss.ndim == 0 and torch.isfinite(loss)
    m.train()
    m.loss(torch.randn(B, H, D), **c).backward()
    assert all(p.grad is not None for n, p in m.named_parameters()), "every parameter gets a gradient"
    m.eval()
    assert m.sample(**c).shape == (B, H, D)
    assert m.sample(batch_size=2).shape == (2, H, D)                    # unconditional
    with pytest.raises(ValueError, match="e_a"):
        m.sample(e_a=torch.randn(B, 4, 11))
    with pytest.raises(ValueError, match="actions must have shape"):
        m.loss(torch.randn(B, H + 1, D), **c)
    with pytest.raises(ValueError, match="latent_dim"):
        FlowMatchingDecoder(FlowDecoderConfig(latent_dim=0)).sample(e_a=torch.randn(1, 4, 8))


def test_pad_mask_excludes_padded_steps():
    m = _model()
    c = _cond()
    a = torch.randn(B, H, D)
    pad = torch.zeros(B, H, dtype=torch.bool)
    pad[:, 5:] = True
    a2 = a.clone()
    a2[:, 5:] = 0
    # loss of step h only depends on a[h] through x_t... but self-attention mixes steps, so compare the
    # masked loss to a direct per-step computation with the same noise and times
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    l_mask = m.loss(a, **c, pad_mask=pad, generator=g1)
    noise = torch.randn(a.shape, generator=g2)
    t = torch.rand(B, generator=g2)
    x_t = (1 - t)[:, None, None] * noise + t[:, None, None] * a
    err = (m(x_t, t, **c) - (a - noise)).pow(2).mean(-1)
    torch.testing.assert_close(l_mask, err[:, :5].mean())
    assert not torch.allclose(l_mask, err.mean())
    with pytest.raises(ValueError, match="pad_mask"):
        m.loss(a, **c, pad_mask=pad[:, :4])


def test_memory_key_mask():
    m = _model()
    c = _cond()
    x, t = torch.randn(B, H, D), torch.rand(B)
    mask = torch.ones(B, 5, dtype=torch.bool)
    mask[:, 3:] = False
    c2 = {**c, "e_v": c["e_v"].clone()}
    c2["e_v"][:, 3:] = 100.0                        # masked-out tokens: any value, same output
    torch.testing.assert_close(m(x, t, **c, masks={"e_v": mask}), m(x, t, **c2, masks={"e_v": mask}))
    torch.testing.assert_close(m(x, t, **c, masks={"e_v": mask}), m(x, t, **{**c, "e_v": c["e_v"][:, :3]}))
    assert not torch.allclose(m(x, t, **c), m(x, t, **c2))


@pytest.mark.parametrize("group", ["e_tau", "e_a", "e_v", "state"])
def test_each_group_changes_output_and_absence_is_real(group):
    m = _model()
    c = _cond()
    x, t = torch.randn(B, H, D), torch.rand(B)
    ref = m(x, t, **c)
    other = {**c, group: torch.randn_like(c[group])}
    assert (m(x, t, **other) - ref).abs().max() > 1e-3, f"{group} content has no effect"
    absent = {**c, group: None}
    out_absent = m(x, t, **absent)
    assert (out_absent - ref).abs().max() > 1e-3, f"dropping {group} has no effect"
    # absence is not a zero placeholder: zeros would still carry the projection bias + type embedding
    zeros = {**c, group: torch.zeros_like(c[group])}
    assert (m(x, t, **zeros) - out_absent).abs().max() > 1e-3
    # and the memory really is shorter
    mem, _ = m.build_memory(**absent)
    full, _ = m.build_memory(**c)
    n_tokens = 1 if group == "state" else c[group].shape[1]
    assert mem.shape[1] == full.shape[1] - n_tokens


def test_num_steps_configurable_and_reproducible():
    m = _model(num_steps=4)
    c = _cond()
    calls = []
    hook = m.action_out.register_forward_hook(lambda *a: calls.append(1))
    m.sample(**c)
    assert len(calls) == 4                                           # config default
    calls.clear()
    s10 = m.sample(**c, num_steps=10, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 10
    hook.remove()
    again = m.sample(**c, num_steps=10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s10, again)
    s1 = m.sample(**c, num_steps=1, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(s1, s10)
    with pytest.raises(ValueError, match="num_steps"):
        m.sample(**c, num_steps=0)


def _toy_task(n, seed):
    """A deterministic nonlinear map from a 4-D context (given to the decoder as 2 E_a tokens) to a chunk."""
    g = torch.Generator().manual_seed(1234)                          # fixed "world"
    W1, W2 = torch.randn(4, 32, generator=g), torch.randn(32, H * D, generator=g) / 32 ** 0.5
    emb = torch.randn(4, 2 * 10, generator=g)
    gs = torch.Generator().manual_seed(seed)
    ctx = torch.rand(n, 4, generator=gs) * 2 - 1
    actions = torch.tanh(1.5 * torch.tanh(ctx @ W1) @ W2).reshape(n, H, D)
    e_a = (ctx @ emb).reshape(n, 2, 10)
    return e_a, actions


def test_flow_decoder_learns_conditional_mapping():
    torch.manual_seed(0)
    cfg = FlowDecoderConfig(horizon=H, action_dim=D, d_model=64, n_layers=2, n_heads=4, latent_dim=10, num_steps=10)
    m = FlowMatchingDecoder(cfg)
    e_a, actions = _toy_task(4096, seed=0)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3, weight_decay=0.0)
    steps = 400
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    m.train()
    for step in range(steps):
        idx = torch.randint(0, 4096, (128,))
        loss = m.loss(actions[idx], e_a=e_a[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    m.eval()
    e_test, a_test = _toy_task(512, seed=1)                          # held-out contexts
    pred = m.sample(e_a=e_test, generator=torch.Generator().manual_seed(0))
    mse = (pred - a_test).pow(2).mean().item()
    var = (a_test - actions.mean(0)).pow(2).mean().item()            # MSE of the best context-blind guess
    pred2 = m.sample(e_a=e_test, num_steps=2, generator=torch.Generator().manual_seed(0))
    mse2 = (pred2 - a_test).pow(2).mean().item()
    print(f"held-out sample MSE {mse:.4f} (10 steps), {mse2:.4f} (2 steps); context-blind MSE {var:.4f}")
    assert mse < 0.1 * var
    # the context matters: the same noise with shuffled contexts is far off
    shuffled = m.sample(e_a=e_test.roll(1, 0), generator=torch.Generator().manual_seed(0))
    assert (shuffled - a_test).pow(2).mean().item() > 5 * mse


def test_global_conditioning_reads_state_and_last_visual_rows():
    m = _model(global_cond=True, global_tokens=2)
    with torch.no_grad():                       # zero-initialised output layer: give it weights (see _model)
        m.global_mlp[2].weight.normal_(0, 0.5)
        m.global_mlp[2].bias.normal_(0, 0.5)
    cond = _cond()
    x, t = torch.randn(B, H, D, generator=torch.Generator().manual_seed(3)), torch.full((B,), 0.4)
    base = m(x, t, **cond)
    g = m.global_condition(cond["e_v"], cond["state"])
    assert g.shape == (B, 32)
    # a change in the last two e_v rows or the state changes the global vector; an earlier row does not
    for key, rows in (("e_v", slice(3, 5)), ("state", slice(None))):
        c2 = {k: v.clone() for k, v in cond.items()}
        c2[key][:, rows] += 1.0
        assert not torch.allclose(m.global_condition(c2["e_v"], c2["state"]), g)
    c3 = {k: v.clone() for k, v in cond.items()}
    c3["e_v"][:, 0] += 1.0
    assert torch.allclose(m.global_condition(c3["e_v"], c3["state"]), g)
    # the vector reaches the blocks: the same memory with the global path's output zeroed gives another result
    memory, pad = m.build_memory(**cond)
    assert not torch.allclose(m.velocity(x, t, memory, pad, None), base, atol=1e-5)
    assert torch.allclose(m.velocity(x, t, memory, pad, g), base, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2 rows"):
        m.global_condition(cond["e_v"][:, :1], cond["state"])
    with pytest.raises(ValueError, match="pass state"):
        m.global_condition(cond["e_v"], None)


def test_global_conditioning_off_by_default_and_starts_as_no_op():
    plain = _model()
    assert plain.global_mlp is None and plain.global_condition(_cond()["e_v"], _cond()["state"]) is None
    assert not any(k.startswith("global_") for k in plain.state_dict())
    torch.manual_seed(0)
    m = FlowMatchingDecoder(FlowDecoderConfig(horizon=H, action_dim=D, d_model=32, n_layers=1, n_heads=4,
                                              visual_dim=12, state_dim=9, global_cond=True, global_tokens=5))
    cond = _cond()
    assert torch.count_nonzero(m.global_condition(cond["e_v"], cond["state"])) == 0
    assert m.global_rows.in_features == 12 and m.global_mlp[0].in_features == 5 * 8 + 9


def test_rtc_weights_freeze_the_delay_then_decay_to_zero():
    from semanticvla_core.model.flow_decoder import rtc_weights
    w = rtc_weights(8, 3, 6)
    assert w.shape == (8,)
    assert torch.all(w[:3] == 1) and torch.all(w[6:] == 0)
    assert torch.all(w[3:6] > 0) and torch.all(w[3:6] < 1) and torch.all(torch.diff(w[3:6]) < 0)
    assert torch.all(rtc_weights(8, 0, 0) == 0)
    with pytest.raises(ValueError):
        rtc_weights(8, 5, 4)


def test_rtc_guided_sampling_continues_the_previous_chunk():
    """Real-time chunking: with the previous chunk's rows as the prefix, the frozen rows of the new chunk come out
    at the prefix (plain sampling of the same noise is far from it), the later rows are pulled towards it, and rows
    with weight 0 are left to the model; the same noise and prefix give the same chunk."""
    from semanticvla_core.model.flow_decoder import rtc_weights
    m = _model()
    c = _cond()
    noise = torch.randn(B, H, D, generator=torch.Generator().manual_seed(3))
    free = m.sample(**c, noise=noise)
    prefix = torch.randn(1, H, D, generator=torch.Generator().manual_seed(4))
    w = rtc_weights(H, 3, 6)
    out = m.sample(**c, noise=noise, prefix=prefix, prefix_weights=w)
    err_frozen = (out[:, :3] - prefix[:, :3]).abs().mean()
    err_free = (free[:, :3] - prefix[:, :3]).abs().mean()
    assert err_frozen < 0.25 * err_free, (err_frozen, err_free)
    assert (out[:, 3:6] - prefix[:, 3:6]).abs().mean() < (free[:, 3:6] - prefix[:, 3:6]).abs().mean()
    torch.testing.assert_close(out, m.sample(**c, noise=noise, prefix=prefix, prefix_weights=w))
    with pytest.raises(ValueError, match="prefix_weights"):
        m.sample(**c, noise=noise, prefix=prefix)
    with pytest.raises(ValueError, match="prefix must have shape"):
        m.sample(**c, noise=noise, prefix=prefix[:, :4], prefix_weights=w)


def test_rtc_replacement_inpainting_pins_the_frozen_rows():
    from semanticvla_core.model.flow_decoder import rtc_weights
    m = _model()
    c = _cond()
    noise = torch.randn(B, H, D, generator=torch.Generator().manual_seed(3))
    prefix = torch.randn(1, H, D, generator=torch.Generator().manual_seed(4))
    w = rtc_weights(H, 3, 6)
    out = m.sample(**c, noise=noise, prefix=prefix, prefix_weights=w, prefix_method="replace")
    torch.testing.assert_close(out[:, :3], prefix[:, :3].expand(B, -1, -1))
    free = m.sample(**c, noise=noise)
    assert (out[:, 3:6] - prefix[:, 3:6]).abs().mean() < (free[:, 3:6] - prefix[:, 3:6]).abs().mean()
    with pytest.raises(ValueError, match="prefix_method"):
        m.sample(**c, noise=noise, prefix=prefix, prefix_weights=w, prefix_method="bogus")


def test_image_age_conditioning_starts_as_no_op_and_tells_fresh_from_old_images():
    """image_age_cond: off by default (no parameters); on, it starts as a no-op (a decoder that gains it computes
    what it did). Trained on a mix of fresh and old images whose right action differs, the decoder that reads the
    age gets both right; the same decoder without it can only hedge between them."""
    assert not any(k.startswith("age_mlp") for k in _model().state_dict())
    m = _model(global_cond=True, global_tokens=2, image_age_cond=True)
    cond = _cond()
    x, t = torch.randn(B, H, D, generator=torch.Generator().manual_seed(3)), torch.full((B,), 0.4)
    assert torch.equal(m(x, t, **cond), m(x, t, **cond, image_age=4.0))          # zero-initialised
    with pytest.raises(ValueError, match="image_age"):
        m(x, t, **cond, image_age=-1.0)

    def toy(n, seed):                            # the action is the context, shifted by how old the image is
        g = torch.Generator().manual_seed(seed)
        e_a = torch.randn(n, 2, 10, generator=g)
        age = torch.randint(0, 2, (n,), generator=g).float() * 4.0               # fresh (0) or 4 steps old
        a = torch.tanh(e_a[:, :1, :D].expand(n, H, D)) * 0.5 + (age / 4.0 - 0.5)[:, None, None]
        return e_a, age, a

    def trained(age_cond):
        torch.manual_seed(0)
        dec = FlowMatchingDecoder(FlowDecoderConfig(horizon=H, action_dim=D, d_model=32, n_layers=2, n_heads=4,
                                                    latent_dim=10, image_age_cond=age_cond))
        e_a, age, a = toy(2048, 0)
        opt = torch.optim.AdamW(dec.parameters(), lr=3e-3, weight_decay=0.0)
        dec.train()
        for _ in range(300):
            i = torch.randint(0, 2048, (128,))
            loss = dec.loss(a[i], e_a=e_a[i], image_age=age[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        dec.eval()
        e_t, age_t, a_t = toy(256, 1)
        pred = dec.sample(e_a=e_t, image_age=age_t, generator=torch.Generator().manual_seed(0))
        return (pred - a_t).pow(2).mean().item()

    with_age, without = trained(True), trained(False)
    print(f"held-out MSE with the image age {with_age:.4f}, without {without:.4f}")
    assert with_age < 0.3 * without and without > 0.3    # (without it, a sample picks either shift: half are 1.0 off)
