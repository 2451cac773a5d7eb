"""EMA vector quantizer: straight-through gradients, commitment loss, k-means init, dead-code revival."""
import torch

from semanticvla_core.model.vq import VectorQuantizer, codebook_usage, kmeans


def test_quantizes_to_nearest_code_and_straight_through():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4)
    vq.train()
    z = torch.randn(32, 4, requires_grad=True)
    out = vq(z)
    assert out.quantized.shape == (32, 4) and out.ids.shape == (32,) and out.ids.dtype == torch.int64
    # value = the code that is nearest (after this step's update the codebook moved; check with lookup)
    vq.eval()
    z2 = torch.randn(10, 3, 4, requires_grad=True)
    out2 = vq(z2)
    d = torch.cdist(z2.detach().reshape(-1, 4), vq.embed)
    assert torch.equal(out2.ids.reshape(-1), d.argmin(1))
    torch.testing.assert_close(out2.quantized.detach(), vq.lookup(out2.ids))
    # straight-through: d(sum q)/dz is the identity; the commitment loss pulls z toward its code
    (out2.quantized.sum() + 0 * out2.loss).backward()
    torch.testing.assert_close(z2.grad, torch.ones_like(z2))
    z2.grad = None
    out3 = vq(z2)
    out3.loss.backward()
    expected = 2 * vq.beta * (z2.detach() - vq.lookup(out3.ids)) / z2[..., 0].numel() / 4
    torch.testing.assert_close(z2.grad, expected)


def test_kmeans_init_uses_data_and_eval_does_not_update():
    torch.manual_seed(0)
    centres = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, -5.0]])
    data = centres.repeat(64, 1) + 0.1 * torch.randn(256, 2)
    vq = VectorQuantizer(4, 2, kmeans_iters=10)
    vq.eval()
    before = vq.embed.clone()
    vq(data)
    assert torch.equal(before, vq.embed) and not bool(vq.initialized)   # eval: no init, no EMA
    vq.train()
    out = vq(data)
    assert bool(vq.initialized)
    # every true centre has a code within 0.5 and all four codes are used: perplexity ~ 4
    assert torch.cdist(centres, vq.embed).min(1).values.max() < 0.5
    assert int(out.codes_used) == 4 and abs(float(out.perplexity) - 4) < 0.1
    assert float(out.loss) < 0.25 * 0.05


def test_mask_excludes_vectors_from_update_and_loss():
    vq = VectorQuantizer(2, 2, decay=0.0)
    vq.train()
    vq(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))          # init on two points
    z = torch.tensor([[1.0, 0.0], [100.0, 100.0]])
    out = vq(z, mask=torch.tensor([True, False]))
    assert float(out.loss) == 0.0                       # only the masked-in vector, which sits on a code
    assert vq.embed.abs().max() < 2                      # the outlier moved no code (decay 0 = full replace)


def test_dead_codes_are_revived():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 2, revive_after=3, decay=0.9)
    vq.train()
    vq(torch.randn(256, 2))                              # init spread over a blob at the origin
    far = torch.randn(256, 2) * 0.1 + torch.tensor([20.0, 20.0])
    # the data moves far away: at first one code captures everything...
    used = [int(vq(far).codes_used) for _ in range(12)]
    assert used[0] <= 2
    # ...then the unused codes are moved onto the data and come into use
    assert used[-1] >= 12, used
    assert (vq.embed - far.mean(0)).norm(dim=1).max() < 2.0


def test_ema_tracks_data_without_gradients():
    torch.manual_seed(0)
    vq = VectorQuantizer(1, 3, decay=0.8)
    vq.train()
    target = torch.tensor([1.0, -2.0, 3.0])
    vq(torch.zeros(8, 3))
    for _ in range(60):
        vq(target + 0.01 * torch.randn(64, 3))
    torch.testing.assert_close(vq.embed[0], target, atol=0.02, rtol=0)
    assert not any(p.requires_grad for p in vq.parameters())


def test_codebook_usage_and_kmeans_helpers():
    ppl, used = codebook_usage(torch.tensor([0, 1, 2, 3] * 5), 8)
    assert used == 4 and abs(ppl - 4) < 1e-4
    ppl, used = codebook_usage(torch.zeros(10, dtype=torch.long), 8)
    assert used == 1 and abs(ppl - 1) < 1e-6
    c = kmeans(torch.randn(3, 2), 5)                     # fewer points than clusters still works
    assert c.shape == (5, 2) and torch.isfinite(c).all()
