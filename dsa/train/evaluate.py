"""Accuracy of a network, a training checkpoint or a merged network on a dataset split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dsa.data import dataset_classes, load_data, prepare_batch
from dsa.errors import (
    DataError,
)
from dsa.models import classifier_head
from dsa.networks import load_for_eval
from dsa.train.config import Accuracy
from dsa.train.distributed import resolve_torch_device


def _loader(ds: Dataset, batch_size: int, num_workers: int, sampler=None, drop_last: bool = False) -> DataLoader:
    # a generator of its own: creating an iterator then never draws from the global RNG (dropout's), so a resumed
    # run continues the global RNG exactly where the checkpoint left it
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
    )


@torch.no_grad()
def accuracy(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    num_workers: int = 0,
    mean=None,
    std=None,
    num_classes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Accuracy:
    """Top-1 (and top-5 with >= 5 classes) accuracy in percent of ``model`` in eval mode; the model's mode is
    restored afterwards. Keeps the top-1 predictions (for comparing two networks on the same data).
    ``progress(batches_done, batches)`` is called after every batch."""
    from dsa.data import IMAGENET_MEAN, IMAGENET_STD

    was_training = model.training
    model.eval()
    preds, labels, correct5, k = [], [], 0, num_classes
    try:
        loader = _loader(dataset, batch_size, num_workers)
        for i, (x, y) in enumerate(loader):
            if progress:
                progress(i, len(loader))
            x = prepare_batch(x, device, mean or IMAGENET_MEAN, std or IMAGENET_STD, channels_last=channels_last)
            logits = model(x).float().cpu()
            k = k or int(logits.shape[1])
            preds.append(logits.argmax(1))
            labels.append(y)
            if k >= 5:
                correct5 += int((logits.topk(5, 1).indices == y.view(-1, 1)).any(1).sum())
    finally:
        model.train(was_training)
    if not preds:
        raise DataError("the evaluation split is empty")
    p, y = torch.cat(preds), torch.cat(labels)
    n = len(y)
    return Accuracy(100.0 * float((p == y).sum()) / n, 100.0 * correct5 / n if k >= 5 else None, n, p)


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str,
    *,
    model: str | None = None,
    plan: str | Path | None = None,
    split: str = "val",
    image_size: int | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    num_workers: int = 0,
) -> dict:
    """Accuracy of a checkpoint on one split of a dataset (see :func:`load_for_eval`)."""
    if split not in ("train", "val", "test"):
        raise DataError(f"split must be train, val or test, got {split!r}")
    if str(data) != "elpv" and not Path(data).is_dir():
        raise DataError(f"--data {data}: not a known dataset name (elpv) and not an existing directory")
    dev = resolve_torch_device(device)
    classes = dataset_classes(data)  # a plain state_dict may need the head width before any image is read
    loaded = load_for_eval(checkpoint, model=model, plan=plan, num_classes=len(classes), image_size=image_size)
    bundle = load_data(data, loaded.image_size)
    _, head = classifier_head(loaded.module)
    if head.out_features != bundle.num_classes:
        raise DataError(
            f"the network has {head.out_features} outputs but {data} has {bundle.num_classes} classes; "
            "evaluate on the dataset it was trained on"
        )
    if loaded.classes is not None and tuple(loaded.classes) != tuple(bundle.classes):
        raise DataError(f"the network was trained on classes {list(loaded.classes)}, {data} has {list(bundle.classes)}")
    acc = accuracy(
        loaded.module.to(dev),
        bundle.split(split),
        batch_size=batch_size,
        device=dev,
        num_workers=num_workers,
        mean=bundle.mean,
        std=bundle.std,
        num_classes=bundle.num_classes,
    )
    return {
        "checkpoint": str(checkpoint),
        "kind": loaded.kind,
        "model": loaded.model,
        "plan_removed": len(loaded.plan.removed) if loaded.plan is not None else None,
        "data": bundle.name,
        "split": split,
        "image_size": loaded.image_size,
        "classes": list(bundle.classes),
        **acc.to_json(),
    }


def quantize_checkpoint(
    checkpoint: str | Path,
    runtime: str,
    data: str,
    *,
    model: str | None = None,
    plan: str | Path | None = None,
    image_size: int | None = None,
    calibration_images: int = 300,
    split: str | None = None,
    check_images: int = 64,
    sensitivity: bool = False,
    batch_size: int = 64,
    progress: Callable[[str, int, int], None] | None = None,
):
    """Quantize a trained or merged network (see :func:`load_for_eval`) to INT8 for ``runtime`` with its own
    tooling (:func:`dsa.quantize.quantize`), calibrated on ``calibration_images`` images of ``data``'s train
    split and checked on ``check_images`` of its val split; then the accuracy of the float32 and the INT8 network
    on ``split`` (default: test when the dataset has one, else val) and, with ``sensitivity``, the per-layer
    report (:func:`dsa.quantize.sensitivity`, on the check images). Returns ``(Quantized, report)``;
    ``progress(step, done, total)``."""
    from dsa.data import calibration_images as images_of
    from dsa.quantize import RuntimeNetwork, check_quantizable, quantize
    from dsa.quantize import sensitivity as layer_sensitivity

    check_quantizable(runtime)
    say = progress or (lambda *_: None)
    classes = dataset_classes(data)
    loaded = load_for_eval(checkpoint, model=model, plan=plan, num_classes=len(classes), image_size=image_size)
    if loaded.kind == "train-merge-ready":
        raise DataError(
            f"{checkpoint} holds a merge-ready network (activations removed, not merged): quantize what is deployed, "
            "the merged network: `dsa merge --plan P --checkpoint C --out merged.pt`, or the merged.pt dsa train wrote"
        )
    bundle = load_data(data, loaded.image_size)
    split = split or ("test" if "test" in bundle.splits else "val")
    net = loaded.module.float().cpu().eval()
    say("calibrating", 0, 3)
    calib = images_of(bundle, calibration_images, "train")
    check_x = images_of(bundle, check_images, "val" if "val" in bundle.splits else "train")
    q = quantize(net, runtime, calib, check_inputs=check_x)
    say("evaluating float32", 1, 3)
    kw = {"batch_size": batch_size, "mean": bundle.mean, "std": bundle.std, "num_classes": bundle.num_classes}
    acc32 = accuracy(net, bundle.split(split), **kw)
    say("evaluating INT8", 2, 3)
    acc8 = accuracy(RuntimeNetwork(q), bundle.split(split), **kw)
    report = {
        "checkpoint": str(checkpoint),
        "kind": loaded.kind,
        "model": loaded.model,
        "plan_removed": len(loaded.plan.removed) if loaded.plan is not None else None,
        "runtime": runtime,
        "data": bundle.name,
        "split": split,
        "image_size": loaded.image_size,
        "classes": list(bundle.classes),
        "quantization": q.info,
        "fp32": acc32.to_json(),
        "int8": acc8.to_json(),
        "top1_drop": acc32.top1 - acc8.top1,
        "prediction_agreement": float((acc32.predictions == acc8.predictions).float().mean()),
    }
    if sensitivity:
        report["sensitivity"] = layer_sensitivity(
            net, runtime, calib, check_x, progress=lambda layer, i, n: say(f"sensitivity {layer}", i, n)
        )
    return q, report
