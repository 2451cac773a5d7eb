"""Training infrastructure (semanticvla_core.training.common): resumable safetensors checkpoints, and
stage 1 as 2 CPU processes (gloo) through torchrun, after which both ranks must hold identical weights.

The test launches this same file with ``python -m torch.distributed.run --standalone --nproc_per_node 2``;
in that mode (``__main__``) every rank trains a few steps of stage A and stage B on *different* data
shards (DistributedSampler) and writes its final state dict (parameters and codebook buffers) to
``rank<r>.safetensors``, plus the untrained initial weights.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve()


def _worker(out: str) -> None:
    torch.set_num_threads(1)
    from semanticvla_core.model.latent_tokenizer import LatentTokenizer
    from semanticvla_core.training.common import cleanup_distributed, seed_everything, setup_distributed
    from semanticvla_core.training.stage1_tokenizer import SyntheticTokenizerDataset, stage1_config, train_tokenizer

    info = setup_distributed("cpu")
    assert info.world_size == 2 and torch.distributed.get_backend() == "gloo"
    cfg = stage1_config("tiny", output_dir=out)
    cfg.train.batch_size, cfg.train.num_workers, cfg.train.progress = 8, 0, False
    cfg.train.log_every, cfg.train.save_every, cfg.train.warmup_steps = 2, 3, 1
    cfg.stage_a_steps = cfg.stage_b_steps = 4
    seed_everything(1234 + info.rank)          # different initial weights per rank: DDP must broadcast
    model = LatentTokenizer(cfg.model)
    if info.rank == 0:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/init.safetensors")
    ds = SyntheticTokenizerDataset(64, cfg.model.image_size, cfg.model.window, seed=3)
    train_tokenizer(cfg, ds, model=model)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, f"{out}/rank{info.rank}.safetensors")
    cleanup_distributed()


class _Regress(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def forward(self, x, y):
        return {"loss": (self.net(x) - y).pow(2).mean()}


def _regress_data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True).sin())


def test_optimizer_checkpoint_round_trip(tmp_path):
    from semanticvla_core.training.common import TrainConfig, load_checkpoint, make_optimizer, save_checkpoint
    torch.manual_seed(0)
    cfg = TrainConfig(lr=1e-2)
    a = _Regress()
    opt = make_optimizer(a.parameters(), cfg)
    x, y = _regress_data().tensors
    for _ in range(3):
        opt.zero_grad()
        a(x, y)["loss"].backward()
        opt.step()
    save_checkpoint(tmp_path / "ck", a, opt, step=3, extra={"note": "x"})
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["model.safetensors", "optimizer.safetensors",
                                                                    "trainer_state.json"]
    torch.manual_seed(1)
    b = _Regress()
    opt_b = make_optimizer(b.parameters(), cfg)
    step, extra = load_checkpoint(tmp_path / "ck", b, opt_b)
    assert step == 3 and extra == {"note": "x"}
    # one more identical step on both gives identical parameters (moments and step counts restored)
    for m, o in ((a, opt), (b, opt_b)):
        o.zero_grad()
        m(x, y)["loss"].backward()
        o.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_trainable_only_checkpoint(tmp_path):
    from semanticvla_core.training.common import TrainConfig, load_checkpoint, make_optimizer, save_checkpoint
    torch.manual_seed(0)
    a = _Regress()
    a.net[0].requires_grad_(False)                        # a frozen "backbone"
    opt = make_optimizer([{"params": a.net[2].parameters(), "lr_scale": 0.5}], TrainConfig(lr=0.1))
    assert all(g["lr"] == 0.05 for g in opt.param_groups)
    save_checkpoint(tmp_path / "ck", a, opt, 1, trainable_only=True)
    assert set(load_file(tmp_path / "ck" / "model.safetensors")) == {"net.2.weight", "net.2.bias"}
    b = _Regress()
    b.net[0].load_state_dict(a.net[0].state_dict())
    b.net[0].requires_grad_(False)
    load_checkpoint(tmp_path / "ck", b, make_optimizer(b.net[2].parameters(), TrainConfig()))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    c = _Regress()                                         # trainable weights missing from the file -> error
    with pytest.raises(ValueError, match="missing"):
        load_checkpoint(tmp_path / "ck", c)


def test_train_loop_resumes_after_interruption(tmp_path):
    import json
    from semanticvla_core.training.common import TrainConfig, train_loop
    cfg = TrainConfig(output_dir=str(tmp_path), steps=6, batch_size=8, lr=1e-2, warmup_steps=1, log_every=1,
                      save_every=2, num_workers=0, progress=False)

    def crashing(net, batch):
        if crashing.calls == 5:
            raise KeyboardInterrupt("simulated crash")
        crashing.calls += 1
        return net(*batch)
    crashing.calls = 0
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train_loop(_Regress(), _regress_data(), crashing, cfg, name="phase")
    state = json.loads((tmp_path / "phase" / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 4 and not (tmp_path / "phase" / "done.json").exists()
    res = train_loop(_Regress(), _regress_data(), lambda net, b: net(*b), cfg, name="phase")
    assert res.step == 6
    steps = [json.loads(l)["step"] for l in (tmp_path / "phase" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]              # history kept up to the checkpoint, then continued
    opt_state = json.loads((tmp_path / "phase" / "checkpoint" / "trainer_state.json").read_text())
    from safetensors.torch import load_file as lf
    adam_steps = lf(tmp_path / "phase" / "checkpoint" / "optimizer.safetensors")["state/0/step"]
    assert int(adam_steps) == 6 and opt_state["step"] == 6     # optimizer state continued, not restarted
    for f in ("loss.png", "done.json"):
        assert (tmp_path / "phase" / f).is_file()
    assert list((tmp_path / "phase" / "tb").glob("events.*"))
    # a finished phase is not retrained: it reloads its weights
    again = train_loop(_Regress(), _regress_data(), crashing, cfg, name="phase")
    assert again.step == 6
    for pa, pb in zip(again.model.parameters(), res.model.parameters()):
        assert torch.equal(pa, pb)


def test_stage1_ddp_two_cpu_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(HERE), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    init = load_file(tmp_path / "init.safetensors")
    assert r0.keys() == r1.keys() and len(r0) > 50
    differ = [k for k in r0 if not torch.equal(r0[k], r1[k])]
    assert not differ, f"ranks diverged on {differ[:5]}"
    # training did something: encoder, decoders, vision tower and both codebooks moved away from init
    for key in ("trace_encoder.net.0.weight", "trace_decoder.net.1.weight", "vision.embeddings.patch_embeddings.projection.weight",
                "latent_queries", "trace_vq.embed", "latent_vq.embed"):
        assert not torch.equal(r0[key], init[key]), f"{key} did not change"
    assert bool(r0["trace_vq.initialized"]) and bool(r0["latent_vq.initialized"])
    # both phases finished and rank 0 wrote the final tokenizer
    for name in ("stage_a", "stage_b"):
        assert (tmp_path / name / "done.json").is_file() and (tmp_path / name / "loss.png").is_file()
    from semanticvla_core.model.latent_tokenizer import LatentTokenizer
    tok = LatentTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert torch.equal(tok.state_dict()["latent_vq.embed"], r0["latent_vq.embed"])


if __name__ == "__main__":
    _worker(sys.argv[1])


def test_train_loop_ema_is_the_moving_average_of_the_trained_weights(tmp_path):
    """ema_decay: the final weights are min(decay, (1+s)/(10+s))-weighted averages of the weights after each
    step (recomputed here from a run without EMA on the same seed and data); resumable checkpoints carry it."""
    from safetensors.torch import load_file as lf
    from semanticvla_core.training.common import TrainConfig, train_loop
    kw = dict(steps=5, batch_size=8, lr=1e-2, warmup_steps=1, log_every=1, save_every=2, num_workers=0,
              progress=False)
    seen = []

    def record(net, batch):
        seen.append([p.detach().clone() for p in net.parameters()])
        return net(*batch)

    torch.manual_seed(0)
    plain = train_loop(_Regress(), _regress_data(), record, TrainConfig(output_dir=str(tmp_path / "a"), **kw),
                       name="phase").model
    after = seen[1:] + [[p.detach().clone() for p in plain.parameters()]]    # weights after steps 1..5
    ema = [t.clone() for t in seen[0]]
    for s, ws in enumerate(after):
        d = min(0.9, (1 + s) / (10 + s))
        ema = [d * e + (1 - d) * w for e, w in zip(ema, ws)]
    torch.manual_seed(0)
    res = train_loop(_Regress(), _regress_data(), lambda net, b: net(*b),
                     TrainConfig(output_dir=str(tmp_path / "b"), ema_decay=0.9, **kw), name="phase")
    for p, e, w in zip(res.model.parameters(), ema, after[-1]):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(p.detach(), w)              # not simply the last weights
    assert len(lf(tmp_path / "b" / "phase" / "checkpoint" / "ema.safetensors")) == len(ema)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


def test_train_loop_resumed_with_no_steps_left_still_saves_the_average(tmp_path):
    """A run stopped after a resumable checkpoint and restarted with --steps at that checkpoint's step trains
    nothing but must still end on the moving average, as an uninterrupted run does (it used to save the raw
    weights of that step)."""
    from semanticvla_core.training.common import TrainConfig, train_loop
    kw = dict(batch_size=8, lr=1e-2, warmup_steps=1, log_every=1, save_every=2, num_workers=0, progress=False,
              ema_decay=0.9)
    torch.manual_seed(0)
    full = train_loop(_Regress(), _regress_data(), lambda net, b: net(*b),
                      TrainConfig(output_dir=str(tmp_path / "a"), steps=2, **kw), name="phase").model
    calls = []

    def crash_at_third(net, b):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt                    # stopped after the step-2 checkpoint (raw weights + EMA)
        return net(*b)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train_loop(_Regress(), _regress_data(), crash_at_third,
                   TrainConfig(output_dir=str(tmp_path / "b"), steps=4, **kw), name="phase")
    resumed = train_loop(_Regress(), _regress_data(), lambda net, b: net(*b),
                         TrainConfig(output_dir=str(tmp_path / "b"), steps=2, **kw), name="phase").model
    for p, q in zip(resumed.parameters(), full.parameters()):
        torch.testing.assert_close(p.detach(), q.detach())
