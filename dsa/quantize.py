"""Post-training static INT8 quantization with each runtime's own tooling, for the original or a merged network.

- **ONNX Runtime**: ``onnxruntime.quantization.quantize_static`` on the network's ONNX export (after ORT's
  ``quant_pre_process``): QDQ format, weights int8 per output channel (symmetric), activations uint8 (MinMax
  ranges over the calibration images) -- the U8S8 scheme ONNX Runtime recommends for x86 CPUs.
- **OpenVINO**: ``nncf.quantize`` on the OpenVINO model read from the same ONNX export: NNCF's default
  (``performance``) preset, symmetric int8 per-channel weights and per-tensor activations, its min/max
  statistics over the calibration images, fast bias correction.

Accuracy proxies need the error INT8 adds at hundreds of candidate merged convs, too many to quantize each with a
runtime's tool; :func:`emulate_conv` rounds one conv the way these schemes do (weights per output channel on the
symmetric int8 grid, the input on the runtime's activation grid: per tensor, or per channel for depthwise convs under
NNCF as NNCF does; MinMax ranges) for scoring only
(``dsa importance --int8``), checked against the runtimes' own per-layer :func:`sensitivity`. Deployment never
uses it.

Every :class:`Quantized` network is compiled and run in its runtime and compared with the float32 network it was
made from on held-back inputs (:func:`check`): a quantization that does not compute the same network (relative
RMS error of the outputs above ``tolerance``) is refused. Calibration data are float32 batches the network takes
(normalised images; random inputs when only speed matters: it does not depend on them).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dsa.errors import DsaError, ExportError
from dsa.transform.layers import relocated_padding
from dsa.vocab import INT8_RUNTIMES

#: relative RMS error of a quantized network's outputs against its float32 form above which it is refused: INT8
#: rounding gives a few percent on trained networks (docs/results.md, issue 15); a broken quantization ~100%
TOLERANCE = 0.5
_PACKAGES = {"onnxruntime": ("onnxruntime",), "openvino": ("openvino", "nncf")}
_EXTRAS = {"onnxruntime": "onnxruntime", "openvino": "int8"}


def check_quantizable(runtime: str) -> str:
    """``runtime`` if dsa quantizes for it and its tooling is installed; else a :class:`DsaError` saying what to do."""
    if runtime not in INT8_RUNTIMES:
        raise DsaError(
            f"INT8 is quantized with the runtime's own tooling: --runtime {' or '.join(INT8_RUNTIMES)} "
            f"(got {runtime!r})"
        )
    for pkg in _PACKAGES[runtime]:
        try:
            metadata.version(pkg)
        except metadata.PackageNotFoundError as e:
            raise DsaError(f"INT8 for {runtime} needs the {pkg} package: pip install 'dsa[{_EXTRAS[runtime]}]'") from e
    return runtime


def scheme(runtime: str) -> dict:
    """How :func:`quantize` quantizes for ``runtime`` (recorded with every INT8 measurement and artifact)."""
    check_quantizable(runtime)
    if runtime == "onnxruntime":
        return {
            "tool": "onnxruntime.quantization.quantize_static",
            "version": metadata.version("onnxruntime"),
            "format": "QDQ",
            "weights": "int8 symmetric, per output channel",
            "activations": "uint8, MinMax calibration",
        }
    return {
        "tool": "nncf.quantize",
        "version": metadata.version("nncf"),
        "openvino": metadata.version("openvino"),
        "preset": "performance",
        "weights": "int8 symmetric, per output channel",
        "activations": "int8/uint8 symmetric, per tensor, min/max calibration",
    }


def check_artifact_path(runtime: str, path: str | Path) -> Path:
    """``path`` if it names the file ``runtime`` loads (``*.onnx`` for ONNX Runtime, ``*.xml`` for OpenVINO)."""
    path = Path(path)
    if runtime == "onnxruntime" and path.suffix != ".onnx":
        raise DsaError(f"an ONNX Runtime INT8 network is an ONNX file: name it *.onnx, not {path.name}")
    if runtime == "openvino" and path.suffix != ".xml":
        raise DsaError(
            f"an OpenVINO INT8 network is an OpenVINO IR: name it *.xml (its .bin goes beside), not {path.name}"
        )
    return path


@dataclass(frozen=True)
class Quantized:
    """An INT8 network for one runtime, in that runtime's own format, and how it was made and checked."""

    runtime: str
    model: object  # ONNX Runtime: the QDQ ONNX model as bytes; OpenVINO: an ``openvino.Model``
    info: dict = field(default_factory=dict)  # scheme, calibration images, check errors

    def save(self, path: str | Path, outputs) -> list[Path]:
        """Stage the artifact in ``outputs`` (:class:`dsa.io.Outputs`): ``path`` (``.onnx`` for ONNX Runtime;
        ``.xml`` for OpenVINO, with its ``.bin`` beside it). Returns the final paths."""
        path = check_artifact_path(self.runtime, path)
        if self.runtime == "onnxruntime":
            outputs.stage(path).write_bytes(self.model)
            return [path]
        import openvino as ov

        with tempfile.TemporaryDirectory(prefix="dsa-ir-") as d:
            ov.save_model(self.model, str(Path(d) / "model.xml"), compress_to_fp16=False)
            xml, bin_ = (Path(d) / "model.xml").read_bytes(), (Path(d) / "model.bin").read_bytes()
        weights = path.with_suffix(".bin")
        outputs.stage(path).write_bytes(xml)
        outputs.stage(weights).write_bytes(bin_)
        return [path, weights]


def _batches(calibration: torch.Tensor | Sequence[torch.Tensor], batch: int = 1) -> list[np.ndarray]:
    if isinstance(calibration, torch.Tensor):
        calibration = [calibration]
    out = [t.detach().float().cpu().contiguous() for t in calibration]
    arrays = [a.numpy() for t in out for a in torch.split(t, batch)]
    if not arrays:
        raise DsaError("INT8 calibration needs at least one input batch")
    return arrays


def _ort_prepared(data: bytes) -> bytes:
    """ONNX Runtime's recommended pre-processing before quantization (shape inference, graph clean-up)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="dsa-int8-") as d:
        src, pre = Path(d) / "model.onnx", Path(d) / "pre.onnx"
        src.write_bytes(data)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        return pre.read_bytes()


# inputs that are shapes, pads, indices or sizes, not activations: the nodes computing them must stay exact
_SHAPE_INPUTS = {
    "Pad": (1, 2),
    "Reshape": (1,),
    "Slice": (1, 2, 3, 4),
    "Expand": (1,),
    "Tile": (1,),
    "Resize": (1, 2, 3),
    "Upsample": (1,),
    "ConstantOfShape": (0,),
    "Range": (0, 1, 2),
}


def _shape_arithmetic(graph) -> set[str]:
    """The nodes of an ONNX graph that compute shapes, pads or indices (back from every such input of a node, up
    to the ``Shape`` nodes they start from). A network whose padding depends on its input size ("same" padding
    computed at run time, as in efficientnet_lite0's convs) exports that arithmetic as nodes; quantized, its
    results are rounded: ONNX Runtime's quantizer would turn a pad of 2 into 1 (measured: a 28x28 output came out
    27x27)."""
    producers = {out: node for node in graph.node for out in node.output}
    stack = [
        node.input[i]
        for node in graph.node
        for i in _SHAPE_INPUTS.get(node.op_type, ())
        if i < len(node.input) and node.input[i]
    ]
    found: set[str] = set()
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in found:
            continue
        found.add(node.name)
        if node.op_type != "Shape":  # a Shape node reads an activation: the arithmetic starts here
            stack.extend(i for i in node.input if i)
    return found


def _quantize_ort(data: bytes, batches: list[np.ndarray], only: Sequence[str] | None = None) -> bytes:
    """``data`` (pre-processed: :func:`_ort_prepared`) quantized, its shape arithmetic left exact; ``only``: just
    these nodes."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"input": x}

    with tempfile.TemporaryDirectory(prefix="dsa-int8-") as d:
        src, dst = Path(d) / "pre.onnx", Path(d) / "int8.onnx"
        src.write_bytes(data)
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=list(only) if only is not None else None,
            nodes_to_exclude=sorted(_shape_arithmetic(onnx.load_from_string(data).graph)),
        )
        return dst.read_bytes()


#: the other ops NNCF quantizes (residual adds, pooling inputs, ...): left in float to quantize one layer alone
_OV_OTHER_QUANTIZABLE = (
    "Add", "Multiply", "Subtract", "Divide", "Maximum", "Minimum", "ReduceMean", "AvgPool", "MaxPool",
    "Interpolate", "Concat", "MVN", "NormalizeL2",
)  # fmt: skip


def _quantize_ov(ov_model, batches: list[np.ndarray], ignored: Sequence[str] = (), ignored_types: Sequence[str] = ()):
    """An ``openvino.Model`` quantized by NNCF; ``ignored``: ops left in float (and ops of ``ignored_types``)."""
    import contextlib
    import io
    import logging

    import nncf

    logging.getLogger("nncf").setLevel(logging.ERROR)
    scope = (
        nncf.IgnoredScope(names=list(ignored), types=list(ignored_types), validate=False)
        if ignored or ignored_types
        else None
    )
    # NNCF draws progress bars on the console while it collects statistics; library code does not print
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return nncf.quantize(ov_model, nncf.Dataset(batches), subset_size=len(batches), ignored_scope=scope)


def _ov_convs(ov_model) -> list[str]:
    return [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() in _OV_CONVS]


def _ov_out_channels(ov_model) -> list[int]:
    ops = [op for op in ov_model.get_ordered_ops() if op.get_type_name() in _OV_CONVS]
    return [op.get_output_partial_shape(0)[1 if op.get_type_name() != "MatMul" else -1].get_length() for op in ops]


def _ort_out_channels(data: bytes) -> list[int]:
    import onnx

    graph = onnx.load_from_string(data).graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    out = []
    for n in graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul"):
            w = dims.get(n.input[1], [0])
            trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)  # ONNX's default: 0
            out.append(w[0] if n.op_type == "Conv" or (n.op_type == "Gemm" and trans_b) else w[-1])
    return out


def _layer_paths(model: nn.Module, nodes: Sequence[str], channels: Sequence[int]) -> list[str]:
    """The module path of each runtime node (convs and the classifier, in graph order). ONNX names carry it, except
    for a traced network (a merged one: its export flattens the names), whose conv and linear calls are matched to
    the nodes in order, checked by their output channels; unmatched: the node's own scope."""
    from dsa.export import scope_of

    scoped = [scope_of(n.removesuffix("/WithoutBiases")) or n for n in nodes]
    if not isinstance(model, torch.fx.GraphModule):
        return scoped
    calls = [
        (n.target, model.get_submodule(n.target))
        for n in model.graph.nodes
        if n.op == "call_module" and isinstance(model.get_submodule(n.target), (nn.Conv2d, nn.Linear))
    ]
    width = [m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for _, m in calls]
    return [t for t, _ in calls] if width == list(channels) else scoped


_OV_CONVS = ("Convolution", "GroupConvolution", "MatMul")


def _ort_convs(data: bytes) -> list[str]:
    import onnx

    return [n.name for n in onnx.load_from_string(data).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]


def quantize(
    model: nn.Module,
    runtime: str,
    calibration: torch.Tensor | Sequence[torch.Tensor],
    *,
    check_inputs: torch.Tensor | None = None,
    tolerance: float = TOLERANCE,
) -> Quantized:
    """``model`` (eval mode, CPU float32) quantized to INT8 for ``runtime`` with its own tooling, calibrated on
    ``calibration`` (a batch or batches of inputs; one image per calibration step), then checked in the runtime
    against the float32 model on ``check_inputs`` (default: the first calibration batch): raises
    :class:`ExportError` when the outputs' relative RMS error exceeds ``tolerance``."""
    from dsa.export import onnx_bytes

    check_quantizable(runtime)
    model = model.float().cpu().eval()
    batches = _batches(calibration)
    example = torch.from_numpy(batches[0])
    data = onnx_bytes(model, example)
    try:
        if runtime == "onnxruntime":
            q = _quantize_ort(_ort_prepared(data), batches)
        else:
            from dsa.export import openvino_model

            q = _quantize_ov(openvino_model(data), batches)
    except DsaError:
        raise
    except Exception as e:  # the tools raise their own types; say which tool failed and why
        raise ExportError(
            f"INT8 quantization for {runtime} failed: {type(e).__name__}: {str(e).splitlines()[0]}"
        ) from e
    info = {**scheme(runtime), "calibration_images": sum(len(b) for b in batches)}
    quantized = Quantized(runtime, q, info)
    x = check_inputs if check_inputs is not None else _first(calibration)
    err = check(quantized, model, x)
    if not err["relative_rms_error"] <= tolerance:
        raise ExportError(
            f"the INT8 network for {runtime} does not compute the float32 network: relative RMS error "
            f"{err['relative_rms_error']:.3g} of the outputs (tolerance {tolerance}); calibrate on real images "
            "(a network with random weights may have degenerate activation ranges)"
        )
    return Quantized(runtime, q, {**info, "check": err})


def _first(calibration) -> torch.Tensor:
    return calibration if isinstance(calibration, torch.Tensor) else calibration[0]


def _run_plain(quantized: Quantized) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable running the INT8 network in its runtime with default options (for checks; timed runs use
    :func:`dsa.measure.runtimes.prepare`, with dsa's session options)."""
    if quantized.runtime == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(quantized.model, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    from dsa.export import openvino_compile

    compiled = openvino_compile(quantized.model)
    return lambda x: torch.from_numpy(compiled(x.numpy())[0].copy())


def relative_rms(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| over the whole tensor."""
    got, ref = got.double(), ref.double()
    return float((got - ref).norm() / ref.norm().clamp_min(1e-300))


def check(quantized: Quantized, model: nn.Module, x: torch.Tensor) -> dict:
    """Run ``quantized`` in its runtime on ``x`` and compare with the float32 ``model``: relative RMS error, max
    absolute error relative to the largest output, and for a classifier how often the top-1 class agrees and the
    KL divergence of the output distributions."""
    run = _run_plain(quantized)
    with torch.inference_mode():
        ref = model.eval()(x).float()
        got = run(x.float().contiguous()).float()
    if got.shape != ref.shape or not bool(torch.isfinite(got).all()):
        raise ExportError(f"the INT8 network for {quantized.runtime} returned {tuple(got.shape)} or non-finite values")
    out = {
        "relative_rms_error": relative_rms(got, ref),
        "max_abs_error_rel": float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)),
        "inputs": int(x.shape[0]),
    }
    if ref.dim() == 2:
        out["top1_agreement"] = float((got.argmax(1) == ref.argmax(1)).float().mean())
        log_p, log_q = ref.double().log_softmax(1), got.double().log_softmax(1)
        out["kl"] = float((log_p.exp() * (log_p - log_q)).sum(1).mean())  # KL(float32 || INT8), nats per input
    return out


@torch.no_grad()
def settle_random_weights(model: nn.Module, input_size: int, images: int = 32, seed: int = 0) -> nn.Module:
    """Re-estimate the BatchNorm statistics of a network with random weights on random images, in place.

    Random weights with BN's initial statistics (mean 0, variance 1) shrink the activations layer by layer
    (mobilenet_v2_140's logits come out near 1e-10), which INT8 cannot represent: its quantized form computes
    zeros. With statistics re-estimated (a cumulative average over ``images`` images) every BN output has unit
    scale, as in a trained network. Speed does not depend on the weights; this only makes the INT8 network of a
    speed benchmark a faithful one."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    was_training = model.training
    g = torch.Generator().manual_seed(seed)
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        model.train()
        for chunk in torch.split(torch.arange(images), 8):
            model(torch.randn(len(chunk), 3, input_size, input_size, generator=g))
    finally:
        for m, (momentum, _) in zip(bns, saved, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return model.eval() if not was_training else model


def sensitivity(
    model: nn.Module,
    runtime: str,
    calibration: torch.Tensor | Sequence[torch.Tensor],
    check_inputs: torch.Tensor,
    progress: Callable[[str, int, int], None] | None = None,
    layers: Sequence[str] | None = None,
) -> list[dict]:
    """Per-layer INT8 sensitivity: for every conv (and the classifier) of ``model`` (or the module paths in
    ``layers``), the network with only that
    layer quantized (its weights and input; by the runtime's own tool, calibrated on ``calibration``; the other
    ops NNCF would quantize -- residual adds, pooling -- left in float too) against the float32 network on
    ``check_inputs``. Rows (``layer`` = module path, ``node`` = the runtime's node name, ``relative_rms_error``,
    ``top1_agreement``, ``kl``) most sensitive first. ``progress(layer, done, total)``."""
    from dsa.export import onnx_bytes, openvino_model

    check_quantizable(runtime)
    model = model.float().cpu().eval()
    batches = _batches(calibration)
    data = onnx_bytes(model, torch.from_numpy(batches[0]))
    if runtime == "onnxruntime":
        data = _ort_prepared(data)
        nodes, channels = _ort_convs(data), _ort_out_channels(data)
    else:
        ov_model = openvino_model(data)
        nodes, channels = _ov_convs(ov_model), _ov_out_channels(ov_model)
    paths = _layer_paths(model, nodes, channels)
    todo = [i for i, p in enumerate(paths) if layers is None or p in layers]
    missing = sorted(set(layers or ()) - {paths[i] for i in todo})
    if missing:
        raise DsaError(f"sensitivity: no conv or linear layer {', '.join(missing)} in the network ({runtime} nodes)")
    rows = []
    for done, i in enumerate(todo):
        node = nodes[i]
        if progress:
            progress(node, done, len(todo))
        if runtime == "onnxruntime":
            q = Quantized(runtime, _quantize_ort(data, batches, only=[node]))
        else:
            others = [other for other in nodes if other != node]
            q = Quantized(runtime, _quantize_ov(openvino_model(data), batches, others, _OV_OTHER_QUANTIZABLE))
        err = check(q, model, check_inputs)
        rows.append({"layer": paths[i], "node": node, **err})
    return sorted(rows, key=lambda r: -r["relative_rms_error"])


def fake_quant_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` rounded to symmetric int8 per output channel (dim 0) on the narrow grid [-127, 127], scale
    max|w| / 127 -- the weight scheme of both runtimes (:func:`scheme`)."""
    w = weight.detach()
    amax = w.abs().reshape(w.shape[0], -1).amax(1).clamp_min(1e-30).reshape(-1, *([1] * (w.dim() - 1)))
    scale = amax / 127
    return (w / scale).round().clamp(-127, 127) * scale


def fake_quant_input(x: torch.Tensor, lo: float | torch.Tensor, hi: float | torch.Tensor, runtime: str) -> torch.Tensor:
    """``x`` rounded to ``runtime``'s activation grid for the range [lo, hi] (numbers, or per-channel tensors of
    x's channels): ONNX Runtime uint8 asymmetric (the range widened to hold 0, an integer zero point); OpenVINO/NNCF
    symmetric, unsigned when the whole range is non-negative (scale hi / 255), else int8 (scale max|x| / 127).
    Values outside the range clip, as they do in the runtime."""
    if runtime not in INT8_RUNTIMES:
        raise DsaError(f"INT8 emulation is for --runtime {' or '.join(INT8_RUNTIMES)} (got {runtime!r})")
    lo, hi = torch.as_tensor(lo, dtype=x.dtype), torch.as_tensor(hi, dtype=x.dtype)
    if lo.dim() == 1:  # per channel
        lo, hi = lo.reshape(1, -1, *([1] * (x.dim() - 2))), hi.reshape(1, -1, *([1] * (x.dim() - 2)))
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    if runtime == "onnxruntime":
        scale = ((hi - lo) / 255).clamp_min(1e-30)
        zero = (-lo / scale).round()
        return ((x / scale).round() + zero).clamp(0, 255).sub(zero) * scale
    if bool((lo >= 0).all()):
        scale = (hi / 255).clamp_min(1e-30)
        return (x / scale).round().clamp(0, 255) * scale
    scale = (torch.maximum(-lo, hi) / 127).clamp_min(1e-30)
    return (x / scale).round().clamp(-128, 127) * scale


def per_channel_input(conv: nn.Module, runtime: str) -> bool:
    """Whether ``runtime``'s scheme gives ``conv``'s input one range per channel: NNCF does for depthwise convs
    (each channel is its own conv); otherwise one range per tensor."""
    return runtime == "openvino" and conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def emulate_conv(
    conv: nn.Module, lo: float | torch.Tensor, hi: float | torch.Tensor, runtime: str
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function computing ``conv`` (an ``nn.Conv2d``, dsa's merged convs included) as ``runtime``'s INT8 scheme
    would: its input rounded for the calibrated range [lo, hi] (per-channel tensors are reduced to one range where
    the scheme has one per tensor: :func:`per_channel_input`), its weights per output channel; bias and
    accumulation in float (int32 in the runtimes). For scoring (see the module docstring), not deployment."""
    weight = fake_quant_weight(conv.weight)
    lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    if lo.dim() == 1 and not per_channel_input(conv, runtime):
        lo, hi = lo.min(), hi.max()

    def run(x: torch.Tensor) -> torch.Tensor:
        xq = fake_quant_input(x, lo, hi, runtime)
        if getattr(conv, "use_pad", False):
            xq = torch.nn.functional.pad(xq, relocated_padding(conv.specs, x.shape[-2], x.shape[-1]))
        return torch.nn.functional.conv2d(xq, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    return run


EMULATION = {
    "weights": "int8 symmetric per output channel, [-127, 127], scale max|w|/127",
    "activations": {
        "onnxruntime": "uint8 asymmetric per tensor, MinMax range holding 0",
        "openvino": "symmetric, per channel for depthwise convs, else per tensor: uint8 for non-negative ranges, "
        "else int8; MinMax",
    },
    "bias": "float",
}


class RuntimeNetwork(nn.Module):
    """A quantized network as a module whose forward runs it in its runtime (CPU, float32 in and out), for code
    that takes modules (e.g. :func:`dsa.train.evaluate.accuracy`)."""

    def __init__(self, quantized: Quantized) -> None:
        super().__init__()
        self.quantized = quantized
        self._run = _run_plain(quantized)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x.detach().float().cpu().contiguous())
