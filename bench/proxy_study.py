"""How well does each accuracy proxy predict what a removal really costs? (issue 7)

On an ELPV-finetuned efficientnet_lite0 (``dsa train ... --out RUN``), for a set of single-segment removals
(every interior block merged DepthShrinker style, plus single activations): finetune each merge-ready network
the same short way (``--epochs`` of KD from the baseline, ``dsa train --plan``), merge it, and measure its
accuracy on the held-out images (val + test, which neither the proxies nor the finetunes see). The drop is
against a control finetuned identically with nothing removed (and again with ``--control-seeds`` other seeds:
the finetune's own noise). Each proxy (``dsa importance`` methods, on
``--samples`` training images) scores the same candidates; the table gives Spearman's rho between proxy and
drop per method, and each method's cost in seconds (for all 32 activations and 16 blocks, as the planner needs).

    python bench/proxy_study.py --checkpoint RUN/baseline/last.pt --out bench/results/proxy_study
    python bench/proxy_study.py ... --smoke      # 2 steps per finetune, 3 candidates: checks the pipeline

Restartable: finished finetunes and proxy files are reused. Prints a markdown table; writes study.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from elpv_finetune import finetune_plan
from scipy.stats import spearmanr

from dsa.data import load_data, prepare_batch
from dsa.formats.importance import METHODS, load_importance_file
from dsa.formats.plan import make_plan
from dsa.formats.profile import load_profile
from dsa.graph import analyze
from dsa.importance import activation_candidates, block_candidates, calibration_batches, score
from dsa.io import atomic_write_json
from dsa.latency.evaluate import activation_savings
from dsa.networks import load_for_eval

# single activations studied besides the blocks: the early, high-resolution ones a CPU plan removes first,
# and the first expansion of each later stage
ACTIVATIONS = (
    "bn1.act",
    "blocks.1.0.bn1.act",
    "blocks.1.0.bn2.act",
    "blocks.1.1.bn1.act",
    "blocks.2.0.bn1.act",
    "blocks.3.0.bn1.act",
    "blocks.4.0.bn1.act",
    "blocks.5.0.bn1.act",
)
CONTROL = "control (nothing removed)"


def heldout(image_size: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """val + test images, normalised, and their labels."""
    bundle = load_data("elpv", image_size)
    xs, ys = [], []
    for split in ("val", "test"):
        ds = bundle.split(split)
        for i in range(len(ds)):
            x, y = ds[i]
            xs.append(x)
            ys.append(int(y))
    x = prepare_batch(torch.stack(xs), "cpu", bundle.mean, bundle.std)
    return x, torch.tensor(ys), bundle.describe()


def accuracy_and_loss(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    net = net.eval()
    with torch.inference_mode():
        logits = torch.cat([net(x[i : i + 64]) for i in range(0, len(x), 64)])
    acc = 100.0 * float((logits.argmax(1) == y).float().mean())
    return acc, float(torch.nn.functional.cross_entropy(logits, y))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="the ELPV-finetuned baseline (dsa train ... last.pt)")
    p.add_argument("--out", required=True)
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--epochs", type=int, default=1, help="short finetune per candidate")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--samples", type=int, default=128, help="calibration images for the proxies")
    p.add_argument("--proxy-batch", type=int, default=32)
    p.add_argument("--finetune-steps", type=int, default=10, help="the finetune proxy's steps per candidate")
    p.add_argument("--gates-steps", type=int, default=60)
    p.add_argument("--profile", default="profiles/local-cpu/efficientnet_lite0_b32_fp32_nchw.json")
    p.add_argument("--control-seeds", type=int, default=2, help="extra control finetunes with other seeds")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    torch.manual_seed(0)
    out = Path(args.out)
    (out / "plans").mkdir(parents=True, exist_ok=True)
    (out / "importance").mkdir(exist_ok=True)
    base = load_for_eval(args.checkpoint)
    a = analyze(base.module.eval(), base.model, args.image_size)

    # ---- candidates: every interior block (one merged conv each) and some single activations
    blocks = block_candidates(a)
    acts = activation_candidates(a, ACTIVATIONS)
    candidates = {**blocks, **acts, CONTROL: make_plan(a, [])}
    if args.smoke:
        candidates = dict(list(blocks.items())[:1] + list(acts.items())[:1] + [(CONTROL, candidates[CONTROL])])
    for name, plan in candidates.items():
        path = out / "plans" / f"{name.replace(' ', '_')}.json"
        if not path.exists():
            plan.save(path)

    # ---- proxies on training images only (all activations and blocks: what the planner would need)
    batches, meta = calibration_batches("elpv", args.image_size, args.samples, args.proxy_batch, seed=0)
    prof = load_profile(args.profile)
    proxies = {}
    for method in METHODS:
        path = out / "importance" / f"{method}.json"
        if not path.exists():
            kw: dict = {}
            if method == "gates":
                # the latency term: predicted savings on this CPU (the profile's calibrated roofline, 160 px)
                kw = {
                    "steps": 2 if args.smoke else args.gates_steps,
                    "savings_ms": activation_savings(a, prof.device(), prof.batch_size, prof.precision),
                }
            elif method == "finetune":
                kw = {"steps": 2 if args.smoke else args.finetune_steps}
            if args.smoke and method in ("removal-kl", "finetune"):
                kw.update(names=list(acts)[:1], blocks=list(blocks)[:1])
            t0 = time.perf_counter()
            imp = score(method, base.module, a, batches, **kw)
            print(f"[proxy] {method}: {time.perf_counter() - t0:.1f} s", flush=True)
            imp = dataclasses.replace(imp, metadata={**imp.metadata, **meta})
            imp.save(path)
        proxies[method] = load_importance_file(path)

    # ---- ground truth: the same short finetune for every candidate, then held-out accuracy of the merged net
    x, y, data_desc = heldout(args.image_size)
    truth = {}
    # the control again with other seeds (data order, augmentation): the finetune's own noise on this measure
    jobs = [(name, name, 0) for name in candidates]
    jobs += [(f"{CONTROL} seed {k}", CONTROL, k) for k in range(1, args.control_seeds + 1)]
    for i, (name, plan_name, seed) in enumerate(jobs):
        run = out / "runs" / name.replace(" ", "_")
        res_path = run / "heldout.json"
        if not res_path.exists():
            t0 = time.perf_counter()
            plan = out / "plans" / f"{plan_name.replace(' ', '_')}.json"
            finetune_plan(
                run,
                args.checkpoint,
                plan,
                model=base.model,
                epochs=args.epochs,
                lr=args.lr,
                image_size=args.image_size,
                seed=seed,
                smoke=args.smoke,
            )
            merged = load_for_eval(run / "merged.pt").module
            acc, loss = accuracy_and_loss(merged, x, y)
            atomic_write_json(res_path, {"top1": acc, "loss": loss, "n": len(y), "seconds": time.perf_counter() - t0})
            print(
                f"[finetune {i + 1}/{len(jobs)}] {name}: {acc:.2f}% loss {loss:.4f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        truth[name] = json.loads(res_path.read_text())

    # ---- the study
    ctrl = truth.pop(CONTROL)
    controls = [ctrl["top1"]] + [truth.pop(f"{CONTROL} seed {k}")["top1"] for k in range(1, args.control_seeds + 1)]
    noise = float(torch.tensor(controls).std()) if len(controls) > 1 else None
    names = list(truth)
    drop = [ctrl["top1"] - truth[n]["top1"] for n in names]
    dloss = [truth[n]["loss"] - ctrl["loss"] for n in names]

    def proxy_of(method: str, name: str) -> float:
        """The method's own score of the candidate (a block measured as a whole where the method can)."""
        imp = proxies[method]
        return imp.segments[name] if name in blocks else imp.scores[name]

    def planner_view(method: str, name: str) -> float:
        """What `dsa plan --importance` sees: per-activation scores only, so a block costs their sum."""
        imp = proxies[method]
        return sum(imp.scores.get(r, imp.default) for r in candidates[name].removed)

    rows = []
    for method in METHODS:
        s = [proxy_of(method, n) for n in names]
        rho, pval = spearmanr(s, drop)
        rho_l, _ = spearmanr(s, dloss)
        planner = [planner_view(method, n) for n in names]
        rho_p, p_p = spearmanr(planner, drop)
        blk = [i for i, n in enumerate(names) if n in blocks]
        rho_pb = spearmanr([planner[i] for i in blk], [drop[i] for i in blk])[0] if len(blk) > 2 else None
        # within one kind: a block removes two activations, so part of the overall correlation is size
        within = {}
        for kind, members in (("blocks", blocks), ("activations", acts)):
            idx = [i for i, n in enumerate(names) if n in members]
            within[kind] = float(spearmanr([s[i] for i in idx], [drop[i] for i in idx])[0]) if len(idx) > 2 else None
        rows.append(
            {
                "method": method,
                "spearman_drop": float(rho),
                "p_value": float(pval),
                "spearman_loss": float(rho_l),
                "spearman_drop_blocks": within["blocks"],
                "spearman_drop_activations": within["activations"],
                "spearman_drop_planner_view": float(rho_p),
                "p_value_planner_view": float(p_p),
                "spearman_drop_blocks_planner_view": None if rho_pb is None else float(rho_pb),
                "seconds": proxies[method].seconds,
            }
        )
    per = [
        {
            "candidate": n,
            "kind": "block" if n in blocks else "activation",
            "removed": len(candidates[n].removed),
            "heldout_top1": truth[n]["top1"],
            "drop_points": d,
            "loss_increase": dl,
            **{m: proxy_of(m, n) for m in METHODS},
        }
        for n, d, dl in zip(names, drop, dloss, strict=True)
    ]
    atomic_write_json(
        out / "study.json",
        {
            "baseline": args.checkpoint,
            "image_size": args.image_size,
            "epochs": args.epochs,
            "lr": args.lr,
            "heldout": {"splits": ["val", "test"], "images": len(y)},
            "data": data_desc,
            "calibration": meta,
            "control": ctrl,
            "control_top1_over_seeds": controls,
            "control_sd": noise,
            "methods": rows,
            "candidates": per,
            "finetune_seconds_median": float(torch.tensor([t["seconds"] for t in truth.values()]).median()),
        },
    )
    print(
        f"efficientnet_lite0 finetuned on ELPV ({args.image_size} px); {len(names)} single-segment removals, each "
        f"finetuned {args.epochs} epoch(s) with KD (lr {args.lr}), merged, scored on val+test ({len(y)} images); "
        f"control (same finetune, nothing removed): {ctrl['top1']:.2f}%"
    )
    if noise is not None:
        print(
            f"the control over {len(controls)} seeds: {', '.join(f'{c:.2f}%' for c in controls)} (sd {noise:.2f} "
            "points): the finetune's own noise on a drop"
        )
    print()
    n_b, n_a = sum(n in blocks for n in names), sum(n in acts for n in names)
    print(
        f"| method | Spearman vs accuracy drop (all {len(names)}; blocks scored whole) | p | among the {n_b} blocks "
        f"| among the {n_a} activations | as `dsa plan` sees it (all {len(names)}; a block = sum of its "
        f"activations) | p | among the {n_b} blocks, as `dsa plan` sees it | Spearman vs loss increase "
        "| cost (s, 2 threads; all activations and blocks) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    fmt = lambda v: "-" if v is None or v != v else f"{v:+.3f}"  # noqa: E731
    for r in rows:
        print(
            f"| {r['method']} | {r['spearman_drop']:+.3f} | {r['p_value']:.3f} | {fmt(r['spearman_drop_blocks'])} | "
            f"{fmt(r['spearman_drop_activations'])} | {r['spearman_drop_planner_view']:+.3f} | "
            f"{r['p_value_planner_view']:.3f} | {fmt(r['spearman_drop_blocks_planner_view'])} | "
            f"{r['spearman_loss']:+.3f} | {r['seconds']:.1f} |"
        )
    print("\n| candidate | removed | held-out top-1 | drop (points) | loss increase | " + " | ".join(METHODS) + " |")
    print("|---|---:|---:|---:|---:|" + "---:|" * len(METHODS))
    for r in sorted(per, key=lambda r: -r["drop_points"]):
        print(
            f"| {r['candidate']} | {r['removed']} | {r['heldout_top1']:.2f}% | {r['drop_points']:+.2f} | "
            f"{r['loss_increase']:+.4f} | " + " | ".join(f"{r[m]:.3g}" for m in METHODS) + " |"
        )


if __name__ == "__main__":
    main()
