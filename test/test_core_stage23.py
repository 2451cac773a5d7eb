"""Stages 2 and 3 as library functions: a few steps on synthetic data, resume from their own
checkpoints, loss curves (PNG + TensorBoard), and final checkpoints in the policy format."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from semanticvla_core.policy import SemanticVLAPolicy
from semanticvla_core.training.stage2_vlm import stage2_config, synthetic_dataset_for, train_vlm
from semanticvla_core.training.stage3_e2e import stage3_config, train_e2e

torch.set_num_threads(1)
HERE = Path(__file__).resolve()


def _small(train, steps):
    train.steps, train.batch_size, train.log_every, train.save_every = steps, 4, 1, 2
    train.warmup_steps, train.progress, train.num_workers = 1, False, 0


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_stage2_then_stage3_run_resume_and_write_curves(tmp_path):
    # ---- stage 2: 4 steps, then resumed to 6 ---------------------------------------------------
    cfg2 = stage2_config("tiny", output_dir=str(tmp_path / "s2"))
    _small(cfg2.train, 4)
    data = synthetic_dataset_for(cfg2.model, 32, seed=0)
    held = synthetic_dataset_for(cfg2.model, 4, seed=1)
    out2 = train_vlm(cfg2, data, held)
    phase = tmp_path / "s2" / "vlm"
    assert (phase / "loss.png").stat().st_size > 1000
    assert any((phase / "tb").iterdir())
    assert json.loads((phase / "checkpoint" / "trainer_state.json").read_text())["step"] == 4
    first = _rows(phase / "metrics.jsonl")
    assert [r["step"] for r in first] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss_trace"]) and np.isfinite(r["loss_latent"]) for r in first)
    report = json.loads((out2 / "stage2_report.json").read_text())
    assert report["eval"]["parse_rate"] == 1.0

    cfg2.train.steps = 6
    out2 = train_vlm(cfg2, data, held)
    rows = _rows(phase / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]      # continued at 5, did not restart at 1
    assert rows[:4] == first
    assert json.loads((phase / "checkpoint" / "trainer_state.json").read_text())["step"] == 6
    stage2_policy = SemanticVLAPolicy.from_pretrained(out2)

    # ---- stage 3 from the stage-2 policy: LoRA + decoder, 2 steps then resumed to 4 ---------------
    cfg3 = stage3_config("tiny", output_dir=str(tmp_path / "s3"), init_from=str(out2))
    _small(cfg3.train, 2)
    data3 = synthetic_dataset_for(stage2_policy.config, 32, seed=0)
    out3 = train_e2e(cfg3, data3, held)
    phase3 = tmp_path / "s3" / "e2e"
    with safe_open(str(phase3 / "checkpoint" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("lora_A" in k for k in keys)                       # resumable state holds the adapter
    cfg3.train.steps = 4
    out3 = train_e2e(cfg3, data3, held)
    rows = _rows(phase3 / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss_flow"]) and np.isfinite(r["loss_vlm"]) for r in rows)
    assert (phase3 / "loss.png").stat().st_size > 1000
    report = json.loads((out3 / "stage3_report.json").read_text())
    assert report["lora"] == "merged" and report["trainable_parameters"]["other"] == 0
    assert report["trainable_parameters"]["lora"] > 0 and report["trainable_parameters"]["act_tokens"] > 0
    assert {"action_mse", "anchor_err", "parse_rate"} <= set(report["eval"])

    # final checkpoint: the policy format, LoRA merged, decoder trained, vision towers untouched
    with safe_open(str(out3 / "model.safetensors"), "pt") as f:
        final = {k: f.get_tensor(k) for k in f.keys()}
    assert not any("lora" in k or "trainable_tokens" in k for k in final)
    with safe_open(str(out2 / "model.safetensors"), "pt") as f:
        s2 = {k: f.get_tensor(k) for k in f.keys()}
    tower = [k for k in final if ".towers." in k]
    assert tower and all(torch.equal(final[k], s2[k]) for k in tower)
    lm_w = [k for k in final if "lm.model.layers.0.self_attn.q_proj.weight" in k][0]
    assert not torch.equal(final[lm_w], s2[lm_w])                 # merged LoRA changed the LM
    policy = SemanticVLAPolicy.from_pretrained(out3)
    sample = data3[0]
    plan = policy.plan(sample["image"], sample["instruction"])
    assert plan.actions.shape == (1, 8, 7) and all(plan.parse_ok)


def _ddp_worker(out: str) -> None:
    """Run by torchrun (2 CPU processes, gloo): stage 3 from a fresh tiny policy, 3 steps on sharded data."""
    from semanticvla_core.training.common import cleanup_distributed, setup_distributed
    from semanticvla_core.training.stage2_vlm import build_policy

    info = setup_distributed("cpu")
    assert info.world_size == 2 and torch.distributed.get_backend() == "gloo"
    cfg = stage3_config("tiny", output_dir=out)
    _small(cfg.train, 3)
    torch.manual_seed(0)
    policy = build_policy(cfg.model)
    data = synthetic_dataset_for(cfg.model, 32, seed=0)
    train_e2e(cfg, data, None, policy=policy)
    save_file({k: v.detach().clone().contiguous() for k, v in policy.state_dict().items()},
              f"{out}/rank{info.rank}.safetensors")
    cleanup_distributed()


def test_stage3_ddp_two_cpu_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(HERE),
           str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert r0.keys() == r1.keys()
    differ = [k for k in r0 if not torch.equal(r0[k], r1[k])]
    assert not differ, f"ranks diverged on {differ[:5]}"     # gradients were all-reduced
    rows = _rows(tmp_path / "e2e" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert (tmp_path / "policy" / "model.safetensors").is_file()


if __name__ == "__main__":
    _ddp_worker(sys.argv[1])


def _cli(name: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"cli_{name}", HERE.parents[1] / "training" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_stages_2_and_3_on_a_lerobot_dataset(tmp_path):
    """The CLIs on a real LeRobot v3 dataset (data pipeline classes): stage 2 labels every frame with a
    stage-1 tokenizer, trains, and stage 3 picks up the labels, the dataset's norm stats and state size."""
    from data_fixtures import make_dataset
    from semanticvla_core.model.latent_tokenizer import LatentTokenizer, tokenizer_config
    from semanticvla_core.normalize import DatasetStats

    make_dataset(tmp_path / "ds", lengths=(14, 16))
    torch.manual_seed(0)
    LatentTokenizer(tokenizer_config("tiny"), with_decoders=False).save_pretrained(tmp_path / "tok", include_decoders=False)
    common = ["--steps", "2", "--batch-size", "4", "--num-workers", "0", "--no-progress", "--save-every", "0",
              "--eval-fraction", "0.2"]
    assert _cli("stage2_vlm").main(["--dataset", str(tmp_path / "ds"), "--latent-tokenizer", str(tmp_path / "tok"),
                                    "--out", str(tmp_path / "s2"), *common]) == 0
    ids_file = tmp_path / "s2" / "latent_ids.safetensors"
    ids = load_file(ids_file)["latent_ids"]
    assert ids.shape == (30, 4) and (ids >= 0).sum() > 0 and ids.max() < 32
    assert _cli("stage3_e2e").main(["--dataset", str(tmp_path / "ds"), "--init-from", str(tmp_path / "s2" / "policy"),
                                    "--latent-ids", str(ids_file), "--out", str(tmp_path / "s3"), *common]) == 0
    policy = SemanticVLAPolicy.from_pretrained(tmp_path / "s3" / "policy")
    assert policy.config.state_dim == 9 and "state" in policy.decoder.cond_proj
    stats = DatasetStats.load(tmp_path / "s3" / "policy" / "norm_stats.json")
    assert stats.action.dim == 7 and stats.state.dim == 9
    img = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    plan = policy.plan(img, "pick up the red block", state=np.zeros(9))
    assert plan.actions.shape == (1, 8, 7) and plan.image_size == (64, 48) and all(plan.parse_ok)


def test_cli_comparison_variants_conventional_and_no_latent_from_stage2(tmp_path, capsys):
    """Variant (4) (both switches off) trains with the stage-3 CLI from a fresh model (and the stage-2
    CLI refuses it); variant (3) loads a (full) stage-2 checkpoint with --set use_latent=false."""
    from semanticvla_core.model.config import get_config
    from semanticvla_core.training.stage2_vlm import build_policy

    common = ["--synthetic", "16", "--steps", "2", "--batch-size", "4", "--num-workers", "0", "--no-progress",
              "--save-every", "0", "--eval-fraction", "0.25", "--threads", "1"]
    assert _cli("stage2_vlm").main(["--no-trace", "--no-latent", "--out", str(tmp_path / "s2x"), *common]) == 2
    assert "no stage 2" in capsys.readouterr().err and not (tmp_path / "s2x").exists()

    # (4) conventional VLA: fresh model, L_VLM = 0, vision/LM LoRA + projector + decoder
    assert _cli("stage3_e2e").main(["--set", "use_trace=false", "--set", "use_latent=false",
                                    "--out", str(tmp_path / "conv"), *common]) == 0
    rows = _rows(tmp_path / "conv" / "e2e" / "metrics.jsonl")
    assert rows and rows[-1]["step"] == 2 and all(r["loss_vlm"] == 0.0 and r["loss_flow"] > 0 for r in rows)
    report = json.loads((tmp_path / "conv" / "policy" / "stage3_report.json").read_text())
    tp = report["trainable_parameters"]
    assert tp["vision_lora"] > 0 and tp["projector"] > 0 and tp["lora"] > 0 and tp["act_tokens"] == 0
    assert tp["other"] == 0 and "anchor_err" not in report["eval"] and report["eval"]["parse_rate"] == 1.0
    conv = SemanticVLAPolicy.from_pretrained(tmp_path / "conv" / "policy")
    assert not conv.config.use_trace and not conv.config.use_latent
    img = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    tplan = conv.plan_trace(img, "move the red dot left")
    assert tplan.raw_text == "" and tplan.anchors.tolist() == [[0.5, 0.5]]
    np.testing.assert_allclose(conv.decode_actions(tplan).actions, conv.plan(img, "move the red dot left").actions[0],
                               rtol=1e-5, atol=1e-6)

    # (3) use_latent=False from a stage-2 checkpoint of the full model (here: an untrained one)
    torch.manual_seed(0)
    build_policy(get_config("tiny")).save_pretrained(tmp_path / "s2" / "policy")
    init = ["--init-from", str(tmp_path / "s2" / "policy")]
    assert _cli("stage3_e2e").main([*init, "--set", "use_trace=false", "--out", str(tmp_path / "bad"), *common]) == 2
    assert "use_trace" in capsys.readouterr().err
    assert _cli("stage3_e2e").main([*init, "--set", "use_latent=false", "--out", str(tmp_path / "nolat"), *common]) == 0
    nolat = SemanticVLAPolicy.from_pretrained(tmp_path / "nolat" / "policy")
    assert nolat.config.use_trace and not nolat.config.use_latent and "e_a" not in nolat.decoder.cond_proj
    report = json.loads((tmp_path / "nolat" / "policy" / "stage3_report.json").read_text())
    assert report["trainable_parameters"]["act_tokens"] == 0 and report["trainable_parameters"]["vision_lora"] == 0
    rows = _rows(tmp_path / "nolat" / "e2e" / "metrics.jsonl")
    assert all(r["loss_latent"] == 0.0 and r["loss_trace"] > 0 for r in rows)
    assert "<ACT_" not in nolat.plan(img, "move the red dot left").texts[0]


def _stage2_for_stage3_cli(tmp_path, state_fn=None, cameras=None):
    """A 2-episode dataset with wrist camera, a tiny untrained tokenizer and a 3-step stage 2 in tmp_path
    (ds/, tok/, s2/); returns the common CLI flags, the latent-ids file and a small stem config (JSON)."""
    from data_fixtures import make_dataset
    from semanticvla_core.model.latent_tokenizer import LatentTokenizer, tokenizer_config

    make_dataset(tmp_path / "ds", lengths=(14, 16), state_fn=state_fn, cameras=cameras)
    torch.manual_seed(0)
    LatentTokenizer(tokenizer_config("tiny"), with_decoders=False).save_pretrained(tmp_path / "tok", include_decoders=False)
    common = ["--steps", "3", "--batch-size", "4", "--num-workers", "0", "--no-progress", "--save-every", "0",
              "--eval-fraction", "0.2", "--threads", "1"]
    assert _cli("stage2_vlm").main(["--dataset", str(tmp_path / "ds"), "--latent-tokenizer", str(tmp_path / "tok"),
                                    "--out", str(tmp_path / "s2"), *common]) == 0
    return common, tmp_path / "s2" / "latent_ids.safetensors", '{"image_size": 32, "wrist_size": 24, "channels": 8, "keypoints": 4}'


def test_cli_stage3_with_own_plans_and_a_visual_stem(tmp_path):
    """--own-plans: the stage-2 VLM's greedy plans are generated once per sample frame and cached; the
    decoder's e_tau / E_a come from them (the flow loss changes with the plan, L_VLM does not); --set stem
    adds the keypoint stem to a stem-less stage-2 checkpoint and it trains with the decoder."""
    from safetensors.numpy import load_file as load_np
    from semanticvla_core.data.pipelines import ActionDataset

    common, ids_file, stem = _stage2_for_stage3_cli(tmp_path)
    assert _cli("stage3_e2e").main(["--dataset", str(tmp_path / "ds"), "--init-from", str(tmp_path / "s2" / "policy"),
                                    "--latent-ids", str(ids_file), "--out", str(tmp_path / "s3"), "--own-plans",
                                    "--anchor-noise", "0.05", "--set", f"stem={stem}", *common]) == 0
    plans = load_np(str(tmp_path / "s3" / "own_plans.safetensors"))
    s2 = SemanticVLAPolicy.from_pretrained(tmp_path / "s2" / "policy")
    ds = ActionDataset(tmp_path / "ds", image_size=s2.config.image_size, latent_ids=ids_file, horizon=8,
                       stem_image_size=32, stem_wrist_size=24, plans=tmp_path / "s3" / "own_plans.safetensors")
    assert len(plans["index"]) == len(ds) and plans["anchors"].shape == (len(ds), 4, 2)
    s = ds[3]
    gen = s2.vlm.generate(s["image"][None], [s["instruction"]])      # the cached plan is the VLM's own
    np.testing.assert_allclose(s["plan_anchors"].numpy(), gen.anchors[0], atol=1e-6)
    np.testing.assert_array_equal(s["plan_latent_ids"].numpy(), gen.latent_ids[0])

    pol = SemanticVLAPolicy.from_pretrained(tmp_path / "s3" / "policy")
    report = json.loads((tmp_path / "s3" / "policy" / "stage3_report.json").read_text())
    assert pol.stem is not None and report["trainable_parameters"]["stem"] > 0
    assert report["config"]["own_plans"] and report["config"]["anchor_noise"] == 0.05
    # forward: the plan reaches the flow loss only
    batch = {k: (v[None] if torch.is_tensor(v) else [v]) for k, v in s.items()}
    torch.manual_seed(0)
    a = pol(batch)
    batch["plan_latent_ids"] = (batch["plan_latent_ids"] + 1) % pol.config.codebook_size
    batch["plan_anchors"] = 1.0 - batch["plan_anchors"]
    torch.manual_seed(0)
    b = pol(batch)
    assert float(a["loss_vlm"]) == float(b["loss_vlm"]) and float(a["loss_flow"]) != float(b["loss_flow"])
    img = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    wrist = (np.random.default_rng(1).random((40, 40, 3)) * 255).astype(np.uint8)
    assert pol.plan(img, "pick up the red block", state=np.zeros(9), wrist=wrist).actions.shape == (1, 8, 7)


def test_cli_stage3_freeze_vlm_trains_the_decoder_on_cached_vlm_outputs(tmp_path):
    """--freeze-vlm: the VLM's generation outputs per frame (plan, E_a, visual tokens, prompt state) are cached
    once; stage 3 trains only the decoder + stem on them (with --ema), the VLM leaves stage 3 bit-identical, and
    the cached-feature loss equals the loss of the full forward on the same (own) plan."""
    from safetensors.numpy import load_file as load_np
    from semanticvla_core.data.pipelines import ActionDataset

    common, ids_file, stem = _stage2_for_stage3_cli(tmp_path)
    assert _cli("stage3_e2e").main(["--dataset", str(tmp_path / "ds"), "--init-from", str(tmp_path / "s2" / "policy"),
                                    "--latent-ids", str(ids_file), "--out", str(tmp_path / "s3"), "--freeze-vlm",
                                    "--ema", "0.9", "--set", f"stem={stem}", *common]) == 0
    feats_file = tmp_path / "s3" / "own_plans_features.safetensors"
    feats = load_np(str(feats_file))
    assert {"index", "anchors", "latent_ids", "latent_hidden", "visual_tokens", "prompt_context"} <= set(feats)
    s2 = SemanticVLAPolicy.from_pretrained(tmp_path / "s2" / "policy")
    pol = SemanticVLAPolicy.from_pretrained(tmp_path / "s3" / "policy")
    for k, v in s2.vlm.state_dict().items():              # frozen: no LoRA merged into it, nothing moved
        assert torch.equal(v, pol.vlm.state_dict()[k]), k
    report = json.loads((tmp_path / "s3" / "policy" / "stage3_report.json").read_text())
    tp = report["trainable_parameters"]
    assert tp["lora"] == tp["act_tokens"] == tp["vision_lora"] == 0 and tp["decoder"] > 0 and tp["stem"] > 0
    assert report["config"]["freeze_vlm"] and report["config"]["own_plans"]
    assert report["config"]["train"]["ema_decay"] == 0.9
    assert (tmp_path / "s3" / "e2e" / "checkpoint" / "ema.safetensors").is_file()
    rows = _rows(tmp_path / "s3" / "e2e" / "metrics.jsonl")
    assert all(r["loss_vlm"] == 0.0 and r["loss_flow"] > 0 for r in rows)

    ds = ActionDataset(tmp_path / "ds", image_size=s2.config.image_size, latent_ids=ids_file, horizon=8,
                       stem_image_size=32, stem_wrist_size=24, plans=feats_file)
    s = ds[5]
    gen = s2.vlm.generate(s["image"][None], [s["instruction"]])      # the cache is the VLM's own generation
    np.testing.assert_allclose(s["plan_latent_hidden"].numpy(), gen.latent_hidden[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(s["plan_visual_tokens"].numpy(), gen.visual_tokens[0].numpy(), atol=1e-5)
    batch = {k: (v[None] if torch.is_tensor(v) else [v]) for k, v in s.items()}
    pol.eval().requires_grad_(False)
    torch.manual_seed(0)
    cached = pol(batch)
    full = {k: v for k, v in batch.items() if k not in ("plan_latent_hidden", "plan_visual_tokens", "plan_prompt_context")}
    torch.manual_seed(0)
    ref = pol(full)                      # VLM run on the same own plan (teacher-forced), then the decoder
    torch.testing.assert_close(cached["loss_flow"], ref["loss_flow"], rtol=1e-4, atol=1e-5)
    pol.decoder.requires_grad_(True)
    pol.vlm.requires_grad_(True)
    with pytest.raises(ValueError, match="stale"):
        pol(batch)

    # --keep-decoder continues the stage-3 policy's own decoder (at lr 0 it leaves unchanged); without it the
    # decoder starts fresh; without --init-from it is refused
    cont = ["--dataset", str(tmp_path / "ds"), "--init-from", str(tmp_path / "s3" / "policy"), "--latent-ids",
            str(ids_file), "--freeze-vlm", "--ema", "0.9", *common, "--lr", "0"]
    for name in ("kept", "fresh"):
        (tmp_path / name).mkdir()
        shutil.copy(feats_file, tmp_path / name / feats_file.name)      # the same frozen VLM: reuse its cache
    # a missing --latent-ids file is computed with the init policy's own stage-1 tokenizer: the same labels
    new_ids = tmp_path / "kept_ids.safetensors"
    assert _cli("stage3_e2e").main([*cont, "--keep-decoder", "--out", str(tmp_path / "kept"),
                                    "--latent-ids", str(new_ids)]) == 0
    np.testing.assert_array_equal(load_np(str(new_ids))["latent_ids"], load_np(str(ids_file))["latent_ids"])
    assert _cli("stage3_e2e").main([*cont, "--out", str(tmp_path / "fresh")]) == 0
    kept_pol = SemanticVLAPolicy.from_pretrained(tmp_path / "kept" / "policy")
    fresh_pol = SemanticVLAPolicy.from_pretrained(tmp_path / "fresh" / "policy")
    for part in ("decoder", "stem"):     # a fresh decoder comes with a fresh stem: the same start as from stage 2
        trained = getattr(pol, part).state_dict()
        kept, fresh = getattr(kept_pol, part).state_dict(), getattr(fresh_pol, part).state_dict()
        assert all(torch.equal(trained[k], kept[k]) for k in trained), part
        assert not all(torch.equal(trained[k], fresh[k]) for k in trained), part
    assert _cli("stage3_e2e").main(["--dataset", str(tmp_path / "ds"), "--keep-decoder", "--latent-ids",
                                    str(ids_file), "--out", str(tmp_path / "bad"), *common]) == 2

    # the delay fine-tune: images up to 3 frames older than the state, the decoder kept and told the images' age
    # (image_age_cond switched on); its own plans are made here for every sample's own frame (made from the delayed
    # images, they once covered random earlier frames and left sample frames without a plan: the run failed)
    dec = {**json.loads((tmp_path / "s3" / "policy" / "config.json").read_text())["config"]["decoder"],
           "image_age_cond": True}
    assert _cli("stage3_e2e").main([*cont, "--keep-decoder", "--out", str(tmp_path / "aged"), "--image-delay-max", "3",
                                    "--set", "decoder=" + json.dumps(dec)]) == 0
    aged_feats = load_np(str(tmp_path / "aged" / feats_file.name))
    np.testing.assert_array_equal(np.sort(aged_feats["index"]), np.sort(feats["index"]))
    aged = SemanticVLAPolicy.from_pretrained(tmp_path / "aged" / "policy")
    assert aged.decoder.config.image_age_cond and aged.decoder.age_mlp is not None


def test_cli_stage3_trace_keypoint_supervision(tmp_path):
    """--lambda-keypoints: every frame gets the grasp / place targets of its episode (ActionDataset.
    keypoint_targets = traces.object_keypoints on the trace and gripper columns), they travel with the cached
    VLM outputs, and the stem's language-queried keypoints are trained on them (loss_keypoints is logged)."""
    from semanticvla_core.data.pipelines import ActionDataset
    from semanticvla_core.traces import object_keypoints

    common, ids_file, stem = _stage2_for_stage3_cli(tmp_path)
    ds = ActionDataset(tmp_path / "ds", image_size=64, latent_ids=ids_file, horizon=8)
    kp = ds.keypoint_targets()
    e = 1
    cols = ds.ds.get_columns(e, ["action", "trace.x", "trace.y", "trace.present"])
    L, start = ds.ds.episode_length(e), ds.ds.episode(e).start
    want, ok = object_keypoints(np.asarray(cols["action"]).reshape(L, 7)[:, 6],
                                np.stack([np.asarray(cols["trace.x"]).reshape(L, -1)[:, 0],
                                          np.asarray(cols["trace.y"]).reshape(L, -1)[:, 0]], -1),
                                np.asarray(cols["trace.present"]).reshape(L))
    np.testing.assert_array_equal(kp["keypoint_uv"][start:start + L], want)
    np.testing.assert_array_equal(kp["keypoint_valid"][start:start + L], ok)
    assert kp["keypoint_valid"].any()

    no_lang = ["--dataset", str(tmp_path / "ds"), "--init-from", str(tmp_path / "s2" / "policy"), "--latent-ids",
               str(ids_file), "--freeze-vlm", "--lambda-keypoints", "1", *common]
    with pytest.raises(ValueError, match="lang_keypoints"):
        _cli("stage3_e2e").main([*no_lang, "--out", str(tmp_path / "bad"), "--set", f"stem={stem}"])
    stem_kp = stem[:-1] + ', "lang_keypoints": 2}'
    assert _cli("stage3_e2e").main([*no_lang, "--out", str(tmp_path / "s3"), "--set", f"stem={stem_kp}"]) == 0
    rows = _rows(tmp_path / "s3" / "e2e" / "metrics.jsonl")
    assert rows and all(r["loss_keypoints"] > 0 for r in rows)
    pol = SemanticVLAPolicy.from_pretrained(tmp_path / "s3" / "policy")
    assert pol.config.stem.lang_keypoints == 2


def test_cli_stage3_tcp_pose_action_frame_and_wrist_keypoints(tmp_path):
    """--set action_frame=tcp_pose on a stage-2 checkpoint: the decoder trains on TCP targets (their own
    statistics travel in the checkpoint's norm_stats.json) and the saved policy plans ee_delta chunks that step
    through its targets from the given state. The dataset's wrist camera has a mount (T_tcp_cam in
    cameras.json), so --lambda-keypoints also trains the wrist view's language keypoints (loss_wrist_keypoints)."""
    from semanticvla_core.camera import PinholeCamera
    from semanticvla_core.robot_state import STATE_DIM, deltas_to_tcp_targets

    def robot_state(e, i):
        s = np.zeros(STATE_DIM)
        s[9:12], s[12:15] = [0.45 + 0.01 * i, 0.02 * e, 0.25 - 0.01 * i], [0.0, 0.0, 0.05 * i]
        return s

    cams = {"observation.images.agentview": PinholeCamera.from_fovy(64, 48, 45.0).to_dict(),
            "observation.images.wrist": {**PinholeCamera.from_fovy(32, 32, 90.0).to_dict(),
                                         "T_tcp_cam": np.eye(4).tolist()}}    # looking along the TCP's z (down)
    common, ids_file, stem = _stage2_for_stage3_cli(tmp_path, state_fn=robot_state, cameras=cams)
    stem_kp = stem[:-1] + ', "lang_keypoints": 2}'
    assert _cli("stage3_e2e").main(["--dataset", str(tmp_path / "ds"), "--init-from", str(tmp_path / "s2" / "policy"),
                                    "--latent-ids", str(ids_file), "--out", str(tmp_path / "s3"), "--freeze-vlm",
                                    "--set", "action_frame=tcp_pose", "--set", f"stem={stem_kp}",
                                    "--lambda-keypoints", "1", *common]) == 0
    rows = _rows(tmp_path / "s3" / "e2e" / "metrics.jsonl")
    assert rows and all(r["loss_wrist_keypoints"] > 0 and r["loss_keypoints"] > 0 for r in rows)
    pol = SemanticVLAPolicy.from_pretrained(tmp_path / "s3" / "policy")
    assert pol.config.action_frame == "tcp_pose" and pol.config.state_dim == STATE_DIM
    assert pol.norm_stats.extra["action_frame"] == "tcp_pose"
    from semanticvla_core.data.lerobot_v3 import LeRobotV3Dataset
    from semanticvla_core.data.pipelines import tcp_target_stats
    want = tcp_target_stats(LeRobotV3Dataset(tmp_path / "ds"), pol.config.horizon)
    np.testing.assert_allclose(pol.norm_stats.action.low, want.low)
    np.testing.assert_allclose(pol.norm_stats.action.high, want.high)
    state = robot_state(0, 3)
    rng = np.random.default_rng(0)
    plan = pol.plan((rng.random((64, 64, 3)) * 255).astype(np.uint8), "pick up the cube", state=state,
                    wrist=(rng.random((32, 32, 3)) * 255).astype(np.uint8))
    np.testing.assert_allclose(deltas_to_tcp_targets(state, plan.actions[0])[:, :3],
                               pol.norm_stats.action.unnormalize(plan.actions_normalized[0].astype(np.float64))[:, :3],
                               atol=1e-5)
