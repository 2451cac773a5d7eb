"""Write the demo-policy report: success by variant, task and instruction kind, loss curves, example overlays.

    python training/report_demo.py --runs runs/demo --out runs/demo/report

Reads, for every variant V found under --runs: ``eval_V.json`` (training/evaluate.py), the training phases'
``metrics.jsonl`` (``stage2_V/vlm``, ``stage3_V/e2e``) and ``videos_V/*.mp4``; writes REPORT.md,
success.png, losses.png and overlays_V.png into --out. Missing pieces are reported as missing, not invented.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

VARIANTS = {  # name -> (label, switches)
    "full": ("SemanticVLA (trace + latent)", "use_trace=True, use_latent=True"),
    "notrace": ("w/o explicit trace", "use_trace=False"),
    "nolatent": ("w/o latent tokens", "use_latent=False"),
    "conventional": ("conventional VLA (both off)", "use_trace=False, use_latent=False"),
}


def _metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _first_frames(video: Path, n: int = 4) -> list[np.ndarray]:
    import av
    frames = []
    with av.open(str(video)) as c:
        all_frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    if all_frames:
        idx = np.linspace(0, len(all_frames) - 1, n).astype(int)
        frames = [all_frames[i] for i in idx]
    return frames


def main(argv=None) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from semanticvla_core.data.viz import contact_sheet, write_png

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="runs/demo")
    ap.add_argument("--out", default="runs/demo/report")
    ap.add_argument("--title", default="SemanticVLA demo policy (simulated Franka, pick_place_plate)")
    a = ap.parse_args(argv)
    runs, out = Path(a.runs), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    evals = {v: json.loads((runs / f"eval_{v}.json").read_text()) for v in VARIANTS if (runs / f"eval_{v}.json").is_file()}
    lines = [f"# {a.title}", ""]
    if not evals:
        lines.append("No evaluation results found (eval_<variant>.json).")
    else:
        kinds = list(next(iter(evals.values()))["success_per_kind"])
        lines += ["## Success rate (evaluation phrasings, held-out seeds)", "",
                  "| variant | switches | episodes | " + " | ".join(kinds) + " | drop direct->rephrased | drop direct->reasoning |",
                  "|---|---|---|" + "---|" * len(kinds) + "---|---|"]
        for v, e in evals.items():
            n_per = {k: sum(1 for ep in e["episodes"] if ep["kind"] == k) for k in kinds}
            cells = [f"{100 * e['success_per_kind'][k]:.0f}% (n={n_per[k]})" for k in kinds]
            drops = [e["relative_drop"].get(f"direct_to_{k}") for k in ("rephrased", "reasoning")]
            dtxt = ["n/a" if d is None else f"{100 * d:.0f}%" for d in drops]
            lines.append(f"| {VARIANTS[v][0]} | {VARIANTS[v][1]} | {e['num_episodes']} | " + " | ".join(cells) +
                         f" | {dtxt[0]} | {dtxt[1]} |")
        modes = [(v, k, e["outcomes_per_kind"][k]) for v, e in evals.items() for k in kinds
                 if k in e.get("outcomes_per_kind", {})]
        if modes:
            lines += ["", "Outcomes (failures by coarse reason, from the cubes' start and end positions: the named cube "
                      "never moved / another cube moved instead / the named cube moved but did not end on the named "
                      "plate):", "", "| variant | kind | success | target untouched | wrong object | moved, not placed |",
                      "|---|---|---|---|---|---|"]
            for v, k, m in modes:
                lines.append(f"| {VARIANTS[v][0]} | {k} | {m.get('success', 0)} | {m.get('target_untouched', 0)} | "
                             f"{m.get('wrong_object', 0)} | {m.get('target_moved_not_placed', 0)} |")
        lines += ["", "Relative drop = (direct - other) / direct. Success is the simulator's predicate (the named cube "
                  "on the named plate). ![success](success.png)", ""]
        fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
        w = 0.8 / len(evals)
        for i, (v, e) in enumerate(evals.items()):
            ax.bar(np.arange(len(kinds)) + i * w, [100 * e["success_per_kind"][k] for k in kinds], w, label=VARIANTS[v][0])
        ax.set_xticks(np.arange(len(kinds)) + w * (len(evals) - 1) / 2, kinds)
        ax.set_ylabel("success [%]")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "success.png")
        plt.close(fig)
    # stage-3 held-out metrics: how good the VLM's own plans are and how well the decoder fits
    rows = []
    for v in VARIANTS:
        rp = runs / f"stage3_{v}" / "policy" / "stage3_report.json"
        if rp.is_file():
            r = json.loads(rp.read_text())
            ev, cfg = r.get("eval", {}), r.get("config", {})
            fmt = lambda x: "n/a" if x is None else f"{x:.3f}"   # noqa: E731
            rows.append(f"| {VARIANTS[v][0]} | {r.get('steps')} | {fmt(ev.get('action_mse'))} | "
                        f"{fmt(ev.get('anchor_err'))} | {fmt(ev.get('latent_acc'))} | "
                        f"{'n/a (no plan)' if v == 'conventional' else ('yes' if cfg.get('own_plans') else 'no')} | "
                        f"{sum(r.get('trainable_parameters', {}).values()):,} |")
    if rows:
        lines += ["## Stage 3 held-out metrics (the VLM's own plans -> decoder, normalized action units)", "",
                  "| variant | steps | action MSE | anchor error | latent-token accuracy | decoder trained on own plans "
                  "| trainable parameters |", "|---|---|---|---|---|---|---|", *rows, ""]
    # loss curves
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.5), dpi=110)
    found = False
    for v in VARIANTS:
        s3 = runs / f"stage3_{v}" / "e2e" / "metrics.jsonl"
        for ax, phase, key, suffix in ((axes[0], runs / f"stage2_{v}" / "vlm" / "metrics.jsonl", "loss", ""),
                                       (axes[1], s3, "loss_flow", ""), (axes[2], s3, "loss_keypoints", " (agent view)"),
                                       (axes[2], s3, "loss_wrist_keypoints", " (wrist)")):
            m = [r for r in _metrics(phase) if key in r and "step" in r]
            if m:
                found = True
                ax.plot([r["step"] for r in m], [r[key] for r in m], label=VARIANTS[v][0] + suffix,
                        ls="--" if "wrist" in key else "-")
    axes[0].set_title("stage 2: L_VLM (trace + latent CE)")
    axes[1].set_title("stage 3: L_flow")
    axes[2].set_title("stage 3: trace keypoint loss (image widths^2)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "losses.png")
    plt.close(fig)
    lines += ["## Training curves", "", "![losses](losses.png)" if found else "(no metrics.jsonl found)", ""]
    s1 = runs / "stage1" / "tokenizer" / "stage1_report.json"
    if s1.is_file():
        r = json.loads(s1.read_text())
        held = r.get("eval") or r.get("heldout") or {}
        lines += ["## Stage 1 (latent action tokenizer)", "", "```", json.dumps(held or r.get("train_last_metrics", {}),
                                                                            indent=1)[:1500], "```", ""]
    # example overlays
    lines += ["## Example overlays (predicted trace drawn on the agent-view camera)", ""]
    for v in VARIANTS:
        vids = sorted((runs / f"videos_{v}").glob("*.mp4")) if (runs / f"videos_{v}").is_dir() else []
        if vids:
            sheet = contact_sheet(_first_frames(vids[0]), cols=4)
            write_png(out / f"overlays_{v}.png", sheet)
            lines.append(f"{VARIANTS[v][0]}: `{vids[0].name}` ![overlays_{v}](overlays_{v}.png)")
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")
    print(f"report: {out / 'REPORT.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
