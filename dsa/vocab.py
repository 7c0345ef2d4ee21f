"""The vocabulary every layer shares, defined once: precisions, layouts, runtimes, the default model and device."""

from __future__ import annotations

from types import MappingProxyType

# the same as roofline.PRECISIONS (a test checks); int8: post-training INT8 under ONNX Runtime / OpenVINO (CPU)
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16", "int8")
PRECISION_BYTES = MappingProxyType({"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "int8": 1})
LAYOUTS: tuple[str, ...] = ("nchw", "channels_last")  # as profiles record them
DEFAULT_MODEL = "mobilenet_v2_140"
DEFAULT_DEVICE = "v100"  # the roofline device when none is given
# what a network is run with; tensorrt prices plans only (roofline, or an imported measured table: dsa has no
# TensorRT adapter to run or profile networks with)
RUNTIMES: tuple[str, ...] = ("eager", "compile", "onnxruntime", "openvino", "tensorrt")
DEFAULT_RUNTIME = "eager"  # DepthShrinker's protocol; what the roofline's kernels model
# runtimes that fold BN into the conv before it and run activations and residual adds inside the producing
# conv's kernel: costs for them price those ops as fused (the roofline's ``fuse_elementwise`` mode)
FUSED_RUNTIMES: frozenset[str] = frozenset({"compile", "onnxruntime", "openvino", "tensorrt"})
# runtimes that time their convolution algorithms and keep the fastest (TensorRT's tactic selection): the
# roofline prices their convs with the ``fastest`` policy (roofline.algorithms); the others with the device's
# default (cuDNN's heuristics on GPUs, direct convolution on CPUs)
TACTIC_RUNTIMES: frozenset[str] = frozenset({"tensorrt"})
# runtimes dsa can run networks under (adapters in dsa.measure.runtimes)
RUN_RUNTIMES: tuple[str, ...] = ("eager", "compile", "onnxruntime", "openvino")
# runtimes whose own profiler reports per-node times (dsa.measure.runtimes.node_times): what `dsa profile` can
# measure a network under besides eager
PROFILED_RUNTIMES: tuple[str, ...] = ("eager", "onnxruntime", "openvino")
# runtimes dsa quantizes networks to INT8 for, with their own post-training tooling (dsa.quantize): ONNX
# Runtime's static quantization and NNCF for OpenVINO
INT8_RUNTIMES: tuple[str, ...] = ("onnxruntime", "openvino")
#: what a network can be deployed in under a runtime: float32, or post-training static INT8 (INT8_RUNTIMES)
DEPLOY_PRECISIONS: tuple[str, ...] = ("fp32", "int8")
