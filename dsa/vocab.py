"""The vocabulary every layer shares, defined once: precisions, layouts, runtimes, the default model and device."""

from __future__ import annotations

from types import MappingProxyType

PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16")  # the same as roofline.PRECISIONS (a test checks)
PRECISION_BYTES = MappingProxyType({"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2})
LAYOUTS: tuple[str, ...] = ("nchw", "channels_last")  # as profiles record them
DEFAULT_MODEL = "mobilenet_v2_140"
DEFAULT_DEVICE = "v100"  # the roofline device when none is given
RUNTIMES: tuple[str, ...] = ("eager", "compile", "onnxruntime", "openvino")  # what a network is run with
DEFAULT_RUNTIME = "eager"  # DepthShrinker's protocol; what the roofline's kernels model
