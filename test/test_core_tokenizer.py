"""Latent action tokenizer: shapes, straight-through gradients, save/load, and a learning test."""
import json

import pytest
import torch

from semanticvla_core.traces import resample_trace
from semanticvla_core.model.latent_tokenizer import LatentTokenizer, LatentTokenizerConfig, tokenizer_config
from semanticvla_core.training.stage1_tokenizer import (SyntheticTokenizerDataset, evaluate_tokenizer, stage1_config,
                                                        train_tokenizer)

torch.set_num_threads(1)


def _batch(cfg, B=4, seed=0):
    ds = SyntheticTokenizerDataset(B, cfg.image_size, cfg.window, seed=seed)
    items = [ds[i] for i in range(B)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = tokenizer_config("tiny")
    model = LatentTokenizer(cfg)
    model.train()
    b = _batch(cfg, 8)
    model(b["trace"], b["image_t"], b["image_tH"], stage="joint")     # initialise both codebooks
    return model


def test_shapes_and_losses(tiny):
    c = tiny.config
    b = _batch(c, 3, seed=1)
    enc = tiny.encode(b["trace"], b["image_t"], b["image_tH"])
    assert enc.latent_ids.shape == (3, c.num_latent_tokens) and enc.latent_ids.dtype == torch.int64
    assert enc.trace_ids.shape == (3, c.trace_code_len) == (3, 3)
    assert enc.trace_code.shape == (3, 3, c.trace_code_dim)
    assert enc.latent_code.shape == (3, c.num_latent_tokens, c.latent_code_dim)
    assert int(enc.latent_ids.max()) < c.latent_codebook_size and int(enc.latent_ids.min()) >= 0
    e_tau = tiny.encode_trace(b["trace"])
    assert e_tau.shape == (3, 3, c.trace_code_dim)
    torch.testing.assert_close(tiny.encode_trace(b["trace"], quantize=True), enc.trace_code)
    assert not torch.equal(e_tau, enc.trace_code)                       # pre-quantization by default
    anchors = torch.from_numpy(resample_trace(b["trace"].numpy(), 4))
    dense = torch.from_numpy(resample_trace(anchors.numpy(), c.window))
    torch.testing.assert_close(tiny.encode_anchors(anchors), tiny.encode_trace(dense), atol=1e-5, rtol=0)
    torch.testing.assert_close(tiny.latent_embeddings(enc.latent_ids), enc.latent_code)
    assert tiny.decode_latent_trace(enc.latent_ids).shape == (3, c.window, 2)
    keys = {"A": {"trace_vq_loss", "trace_recon_loss", "trace_err"},
            "B": {"latent_vq_loss", "latent_trace_recon_loss", "visual_recon_loss", "latent_perplexity"}}
    for stage in ("A", "B", "joint"):
        out = tiny(b["trace"], b["image_t"], b["image_tH"], b["trace_present"], stage=stage)
        want = keys.get(stage, keys["A"] | keys["B"])
        assert want <= set(out) and out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="trace must have shape"):
        tiny.encode_trace(torch.rand(3, 5, 2))
    with pytest.raises(ValueError, match="images must have shape"):
        tiny.encode(b["trace"], torch.rand(3, 3, 32, 32), b["image_tH"])
    with pytest.raises(ValueError, match="needs image_t"):
        tiny(b["trace"], stage="B")
    with pytest.raises(ValueError, match="window"):
        LatentTokenizerConfig(window=10, trace_downsample=2)


def test_straight_through_gradients_reach_encoders(tiny):
    b = _batch(tiny.config, 4, seed=2)
    tiny.set_stage("A")
    tiny.zero_grad(set_to_none=True)
    out = tiny(b["trace"], stage="A")
    out["trace_recon_loss"].backward()         # only through the quantizer: commitment loss not included
    g = tiny.trace_encoder.net[0].weight.grad
    assert g is not None and g.abs().sum() > 0
    tiny.set_stage("B")
    tiny.zero_grad(set_to_none=True)
    out = tiny(b["trace"], b["image_t"], b["image_tH"], stage="B")
    out["latent_trace_recon_loss"].backward()  # latent trace decoder <- latent VQ (straight-through) <- fusion
    assert tiny.fusion[0].xattn.in_proj_weight.grad.abs().sum() > 0
    assert tiny.vision.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert tiny.trace_encoder.net[0].weight.grad is None                # stage A frozen in stage B
    tiny.set_stage("joint")


def test_trace_present_masks_trace_losses(tiny):
    b = _batch(tiny.config, 4, seed=3)
    tiny.eval()
    bad = b["trace"].clone()
    bad[2:] = torch.rand_like(bad[2:])
    present = torch.tensor([True, True, False, False])
    ref = tiny(b["trace"][:2], b["image_t"][:2], b["image_tH"][:2], stage="A")
    out = tiny(bad, b["image_t"], b["image_tH"], present, stage="A")
    torch.testing.assert_close(out["trace_recon_loss"], ref["trace_recon_loss"])
    tiny.train()


def test_save_load_identical_ids_and_version(tiny, tmp_path):
    b = _batch(tiny.config, 5, seed=4)
    tiny.eval()
    enc = tiny.encode(b["trace"], b["image_t"], b["image_tH"])
    path = tiny.save_pretrained(tmp_path / "tok")
    meta = json.loads((path / "config.json").read_text())
    assert meta["codebook_version"] == tiny.codebook_version == LatentTokenizer.read_codebook_version(path)
    assert not list(path.glob("*.bin")) and not list(path.glob("*.pt"))
    loaded = LatentTokenizer.from_pretrained(path)
    enc2 = loaded.encode(b["trace"], b["image_t"], b["image_tH"])
    assert torch.equal(enc.latent_ids, enc2.latent_ids) and torch.equal(enc.trace_ids, enc2.trace_ids)
    torch.testing.assert_close(loaded.encode_trace(b["trace"]), tiny.encode_trace(b["trace"]))
    # encoder-only checkpoint: same ids and version, no decoders
    enc_only = LatentTokenizer.from_pretrained(tiny.save_pretrained(tmp_path / "enc", include_decoders=False))
    assert not enc_only.with_decoders and enc_only.codebook_version == tiny.codebook_version
    assert torch.equal(enc_only.encode(b["trace"], b["image_t"], b["image_tH"]).latent_ids, enc.latent_ids)
    # a different codebook gives a different version, and a tampered checkpoint is refused
    other = LatentTokenizer.from_pretrained(path)
    other.latent_vq.embed.add_(0.01)
    assert other.codebook_version != tiny.codebook_version
    meta["codebook_version"] = "lat-0000000000000000"
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="codebook_version"):
        LatentTokenizer.from_pretrained(path)
    tiny.train()


def test_tokenizer_learns_held_out_traces(tmp_path):
    """Stage 1 on toy curves: held-out reconstruction must beat what a model ignoring the trace shape can do."""
    cfg = stage1_config("tiny", output_dir=str(tmp_path))
    cfg.train.num_workers, cfg.train.progress, cfg.train.save_every = 0, False, 0
    cfg.stage_a_steps, cfg.stage_b_steps, cfg.stage_b_lr = 600, 250, 2e-3
    train = SyntheticTokenizerDataset(2000, cfg.model.image_size, cfg.model.window, seed=0)
    held = SyntheticTokenizerDataset(256, cfg.model.image_size, cfg.model.window, seed=1)
    path = train_tokenizer(cfg, train, held)
    report = json.loads((path / "stage1_report.json").read_text())["eval"]
    print("held-out:", report)
    # reference errors of trace-blind predictors on the held-out set
    tr = torch.stack([held[i]["trace"] for i in range(len(held))])
    tr_train = torch.stack([train[i]["trace"] for i in range(500)])
    mean_err = (tr - tr_train.mean(0)).norm(dim=-1).mean().item()                       # ~0.25
    disp = (tr_train - tr_train[:, :1]).mean(0)
    start_err = (tr - (tr[:, :1] + disp)).norm(dim=-1).mean().item()                      # ~0.13 (knows start)
    print(f"baselines: mean trace {mean_err:.3f}, true start + mean displacement {start_err:.3f}")
    assert report["trace_err"] < 0.5 * start_err
    assert report["latent_trace_err"] < 0.85 * start_err
    assert report["trace_codes_used"] >= 0.75 * cfg.model.trace_codebook_size
    assert report["latent_codes_used"] >= 0.75 * cfg.model.latent_codebook_size
    assert report["latent_perplexity"] >= 0.5 * cfg.model.latent_codebook_size
    # the visual decoder predicts o_{t+H} better than copying o_t
    copy = torch.stack([(held[i]["image_tH"] - held[i]["image_t"]).pow(2).mean() for i in range(len(held))]).mean()
    print(f"visual recon {report['visual_recon_mse']:.5f} vs copy o_t {copy:.5f}")
    assert report["visual_recon_mse"] < float(copy)
    # the saved model reproduces the report
    again = evaluate_tokenizer(LatentTokenizer.from_pretrained(path), held)
    assert abs(again["trace_err"] - report["trace_err"]) < 1e-5


def test_cli_trains_on_a_lerobot_dataset(tmp_path):
    """training/stage1_tokenizer.py end to end on a small LeRobot v3 dataset (2 steps per phase)."""
    import importlib.util
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from data_fixtures import make_dataset
    make_dataset(tmp_path / "ds", lengths=(20, 20, 20, 20))
    spec = importlib.util.spec_from_file_location("stage1_cli", Path(__file__).parents[1] / "training" / "stage1_tokenizer.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    rc = cli.main(["--dataset", str(tmp_path / "ds"), "--config", "tiny", "--out", str(tmp_path / "run"),
                   "--steps-a", "2", "--steps-b", "2", "--batch-size", "4", "--num-workers", "0", "--no-progress",
                   "--eval-fraction", "0.25", "--label-latents"])
    assert rc == 0
    report = json.loads((tmp_path / "run" / "tokenizer" / "stage1_report.json").read_text())
    assert report["eval"]["num_samples"] == 20 - cli_horizon(report)          # one whole held-out episode
    tok = LatentTokenizer.from_pretrained(tmp_path / "run" / "tokenizer")
    assert tok.config.image_size == 64 and tok.codebook_version == report["codebook_version"]
    # stage-2 labels in the format the data pipeline reads, tagged with the codebook version
    from safetensors import safe_open
    from semanticvla_core.data.pipelines import TokenizerDataset, load_latent_ids
    ids_path = tmp_path / "run" / "tokenizer" / "latent_ids.safetensors"
    ids = load_latent_ids(ids_path, 80)
    with safe_open(str(ids_path), "np") as f:
        assert f.metadata()["codebook_version"] == tok.codebook_version
    h = tok.config.frame_horizon
    assert ids.shape == (80, 4) and (ids[:, 0] >= 0).sum() == 4 * (20 - h)
    ds = TokenizerDataset(tmp_path / "ds", image_size=64, window=12, horizon=h)
    s = ds[3]
    enc = tok.encode(s["trace"][None], s["image_t"][None], s["image_tH"][None])
    assert ids[int(s["index"])].tolist() == enc.latent_ids[0].tolist()


def cli_horizon(report):
    return report["config"]["model"]["frame_horizon"]


def test_frozen_pretrained_tower_from_local_path(tmp_path):
    """vision_pretrained_path: the tower is loaded from disk, frozen, in eval mode, reconstructs features."""
    from transformers import Dinov2Config, Dinov2Model
    torch.manual_seed(0)
    tower = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                                     patch_size=8, image_size=32))
    tower.save_pretrained(tmp_path / "dino")
    cfg = tokenizer_config("tiny", image_size=32, vision_pretrained_path=str(tmp_path / "dino"))
    assert not cfg.tower_trainable and cfg.resolved_visual_target == "features"
    model = LatentTokenizer(cfg).train()
    assert not model.vision.training
    torch.testing.assert_close(model.vision.embeddings.patch_embeddings.projection.weight,
                               tower.embeddings.patch_embeddings.projection.weight)
    assert not any(p.requires_grad for p in model.vision.parameters())
    assert not any(p is q for p in model.stage_parameters("B") for q in model.vision.parameters())
    b = _batch(cfg, 4)
    model.set_stage("B")
    out = model(b["trace"], b["image_t"], b["image_tH"], stage="B")
    out["loss"].backward()
    assert model.vis_out.weight.shape[0] == 32 and model.vis_out.weight.grad is not None   # feature target
    # the checkpoint is self-contained: loading never touches the original path
    path = model.save_pretrained(tmp_path / "tok")
    (tmp_path / "dino" / "model.safetensors").unlink()
    loaded = LatentTokenizer.from_pretrained(path)
    assert loaded.codebook_version == model.codebook_version
