"""Stage 1 as 2 CPU processes (gloo) through torchrun: both ranks must end with identical weights.

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
