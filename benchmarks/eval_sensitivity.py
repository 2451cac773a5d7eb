"""How much an evaluation's per-episode outcomes depend on the machine: the same checkpoint, seeds and code, run
with different torch thread counts and CPU instruction sets (torch's ``ATEN_CPU_CAPABILITY``: the kernels another
CPU would run). Each variant is a separate ``training/evaluate.py`` process; the first one is the reference.

    MUJOCO_GL=egl .venv/bin/python benchmarks/eval_sensitivity.py --episodes 20 --seed 100000 \
        [--checkpoint checkpoints/demo] [--loop rtc --delay 2 --image-delay 4] [--out runs/eval_sensitivity]

Prints, per variant: successes, and the episodes whose steps or outcome differ from the reference. A closed loop
amplifies float differences in the last bits (a kernel that sums in another order): a success rate measured on
one machine is reproduced elsewhere within its interval, not episode by episode.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# name -> environment (set before torch is imported in the evaluation process)
VARIANTS = {
    "1 thread (reference)": {"OMP_NUM_THREADS": "1"},
    "2 threads": {"OMP_NUM_THREADS": "2"},
    "1 thread, AVX2 kernels": {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "avx2"},
    "1 thread, no SIMD kernels": {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default"},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "demo"))
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=100_000)
    ap.add_argument("--task", default="pick_place_plate")
    ap.add_argument("--loop", default="synchronous")
    ap.add_argument("--delay", type=int, default=0)
    ap.add_argument("--image-delay", type=int, default=0)
    ap.add_argument("--parallel", type=int, default=2, help="evaluations run at once (results do not depend on it)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "eval_sensitivity"))
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from machine import cpu_model
    print(f"machine: {cpu_model()}, {os.cpu_count()} cpus; {len(VARIANTS)} evaluations of {a.episodes} episodes, "
          f"{a.parallel} at a time")

    procs, reports = [], {}
    for i, (name, env) in enumerate(VARIANTS.items()):
        report = out / f"variant{i}.json"
        cmd = [sys.executable, str(ROOT / "training" / "evaluate.py"), "--checkpoint", a.checkpoint, "--tasks", a.task,
               "--kinds", "direct", "--episodes", str(a.episodes), "--seed", str(a.seed), "--loop", a.loop,
               "--delay", str(a.delay), "--image-delay", str(a.image_delay), "--out", str(report)]
        e = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "ATEN_CPU_CAPABILITY")}
        e.update(env)
        e.setdefault("MUJOCO_GL", "egl")
        while sum(p.poll() is None for p in procs) >= a.parallel:
            next(p for p in procs if p.poll() is None).wait()
        procs.append(subprocess.Popen(cmd, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        reports[name] = (report, procs[-1])
    for p in procs:
        p.wait()

    rows = {}
    for name, (report, p) in reports.items():
        if p.returncode != 0 or not report.is_file():
            print(f"{name}: evaluation failed (exit {p.returncode})")
            continue
        r = json.loads(report.read_text())
        rows[name] = ({e["seed"]: (e["steps"], bool(e["success"])) for e in r["episodes"]}, r.get("environment", {}))
    if not rows:
        return 1
    ref_name = next(iter(rows))
    ref = rows[ref_name][0]
    result = {}
    for name, (eps, env) in rows.items():
        diff = {s: {"reference": ref[s], "this": eps[s]} for s in ref if s in eps and eps[s] != ref[s]}
        flips = sum(1 for d in diff.values() if d["reference"][1] != d["this"][1])
        result[name] = {"successes": sum(ok for _, ok in eps.values()), "episodes": len(eps),
                        "episodes_differing": len(diff), "outcomes_flipped": flips, "differing": diff,
                        "torch_threads": env.get("torch_threads")}
        print(f"{name:28s} success {result[name]['successes']:3d}/{len(eps)}  episodes differing from the reference "
              f"{len(diff):2d} (outcome flipped {flips})  " + ", ".join(
                  f"{s}: {d['reference'][0]}->{d['this'][0]} steps" for s, d in sorted(diff.items())))
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    print(f"summary: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
