"""Finetune a network with a dsa plan in a plain PyTorch loop, then merge it and check the merge.

    python examples/finetune_plain_pytorch.py                      # solves a plan for 2x on a V100 first
    python examples/finetune_plain_pytorch.py --plan plan.json     # or uses yours (from `dsa plan ...`)

The data here is random (a few steps, on the CPU, to show the API); put your DataLoader in its place.
The three calls that matter are ``dsa.load_plan``, ``dsa.apply_plan`` (the network to finetune: removed
activations are nn.Identity, DepthShrinker's ReLU6s are added, padding is moved so the result merges exactly)
and ``dsa.merge`` (one conv per segment, verified against the finetuned network).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import dsa


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2_140", help="registry name or package.module:factory")
    ap.add_argument("--plan", default=None, help="a plan file (default: solve one for --target-speedup)")
    ap.add_argument("--target-speedup", type=float, default=2.0, help="predicted speed-up on --gpu (no --plan)")
    ap.add_argument("--gpu", default="v100")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--size", type=int, default=96, help="training resolution (merged nets work at any size)")
    ap.add_argument("--classes", type=int, default=1000)
    args = ap.parse_args(argv)
    torch.manual_seed(0)

    model = dsa.create_model(args.model)  # or your own nn.Module, with your trained weights loaded
    if args.plan:
        plan = dsa.load_plan(args.plan)
    else:  # the same as `dsa plan --model M --gpu G --target-speedup X --out plan.json`
        from dsa.models import input_size
        from dsa.planner.planner import plan_for_target

        analysis = dsa.analyze(model, args.model, input_size(args.model))
        result = plan_for_target(analysis, args.gpu, target_speedup=args.target_speedup)
        plan = result.plan
        print(f"plan: {len(plan.removed)} activations removed, predicted {result.speedup:.2f}x on {result.device}")

    # 1. the merge-ready network: finetune this one (any optimizer, schedule, distillation, AMP, DDP, ...)
    ready = dsa.apply_plan(model, plan)
    ready.train()
    opt = torch.optim.SGD(ready.parameters(), lr=1e-3, momentum=0.9)
    for step in range(args.steps):
        x = torch.randn(args.batch_size, 3, args.size, args.size)
        y = torch.randint(0, args.classes, (args.batch_size,))
        loss = F.cross_entropy(ready(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step}: loss {loss.item():.3f}")
    # a checkpoint of the finetuned network is a plain state_dict of the merge-ready network:
    state = {k: v.clone() for k, v in ready.state_dict().items()}

    # 2. later (or in another process): rebuild the merge-ready network, load the finetuned weights, merge
    ready = dsa.apply_plan(dsa.create_model(args.model), plan)
    ready.load_state_dict(state)
    ready.eval()
    t0 = time.perf_counter()
    merged = dsa.merge(ready)  # raises MergeVerificationError rather than return a wrong network
    error = dsa.merge_record(merged).max_rel_error
    print(f"merged in {time.perf_counter() - t0:.1f} s; verified max relative error {error:.1e}")

    # 3. check it yourself at the training resolution
    x = torch.randn(2, 3, args.size, args.size)
    with torch.no_grad():
        want, got = ready(x), merged(x)
    err = ((got - want).abs().max() / want.abs().max()).item()
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in merged.modules())
    print(f"merged network: {convs} convs; max relative difference to the finetuned one: {err:.1e}")
    assert err < 1e-4
    return err


if __name__ == "__main__":
    main()
