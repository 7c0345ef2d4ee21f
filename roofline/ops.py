"""Per-op work descriptions: MACs, bytes moved and the shapes the latency model needs.

Counting convention, stated once for the whole package: **one multiply-add (MAC) is 2 FLOP**.
:class:`OpSpec` stores ``macs``; ``flops`` is always ``2 * macs``. (fvcore's FlopCountAnalysis
reports MACs under the name "flops"; torch's FlopCounterMode and vendor peaks count 2 per MAC.)

Every count is a total for one call of the op on a whole batch (not per image). Bytes assume each
tensor crosses DRAM exactly once: input read, weights read, output written, no cache reuse
across ops.

MACs of a convolution: ``batch * h_out * w_out * c_out * (c_in / groups) * kh * kw`` (bias adds
are not counted, as in fvcore and FlopCounterMode). Linear: ``batch * in_features *
out_features``. Elementwise and pooling MACs are nominal (one per element per extra operand, one
per pooling-window element); such ops are memory-bound on every device the model knows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from roofline.errors import RooflineError

__all__ = [
    "GEMM_CLASSES",
    "OP_CLASSES",
    "OpClass",
    "OpSpec",
    "conv2d_op",
    "elementwise_op",
    "linear_op",
    "pooling_op",
]


class OpClass(str, Enum):
    """Op classes with distinct hardware behaviour (and a calibrated efficiency each)."""

    DENSE_CONV = "dense_conv"  # groups == 1, kernel larger than 1x1
    DEPTHWISE_CONV = "depthwise_conv"  # groups == c_in == c_out > 1
    POINTWISE_CONV = "pointwise_conv"  # groups == 1, 1x1 kernel
    GROUPED_CONV = "grouped_conv"  # any other groups > 1
    LINEAR = "linear"
    ELEMENTWISE = "elementwise"  # BN (eval), activation, residual add, ...
    POOLING = "pooling"

    def __str__(self) -> str:
        return self.value


OP_CLASSES: tuple[str, ...] = tuple(c.value for c in OpClass)
#: Classes executed as a GEMM (implicit or explicit); only these may use tensor cores.
GEMM_CLASSES: frozenset[OpClass] = frozenset(
    {OpClass.DENSE_CONV, OpClass.POINTWISE_CONV, OpClass.GROUPED_CONV, OpClass.LINEAR}
)

#: Nominal MACs per output element for elementwise kinds (extra operands are added for "add"/"mul").
_ELEMENTWISE_KINDS = ("bn", "act", "add", "mul", "other")


@dataclass(frozen=True, kw_only=True)
class OpSpec:
    """One op at a given batch size. All counts are totals for the batch.

    Fields:
      - ``name``: label (e.g. the module's qualified name).
      - ``op_class``: an :class:`OpClass`.
      - ``kind``: finer label: ``"conv"``, ``"linear"``, ``"bn"``, ``"act"``, ``"add"``,
        ``"avg_pool"``, ``"max_pool"``, ...
      - ``batch``: images per call.
      - ``macs``: multiply-adds (``flops = 2 * macs``).
      - ``bytes_weights``, ``bytes_input``, ``bytes_output``: DRAM traffic in bytes.
      - ``dtype_bytes``: bytes per element (4 fp32/tf32, 2 fp16/bf16).
      - ``out_elements``: output elements (for thread-block counts).
      - ``c_in``, ``c_out``, ``groups``, ``kernel`` (kh, kw): channel shape; elementwise and
        pooling ops have ``c_in == c_out == channels`` (0 if unknown), ``groups == 1``.
      - ``gemm_m``, ``gemm_n``, ``gemm_k``: GEMM view of a conv/linear, per group:
        M = batch * h_out * w_out, N = c_out / groups, K = c_in / groups * kh * kw
        (0 for classes that are not GEMMs).
      - ``h_out``, ``w_out``, ``stride``: a conv's output map and stride (0 and (1, 1) for other ops),
        which decide the convolution algorithms a library may use (:mod:`roofline.algorithms`).
    """

    name: str
    op_class: OpClass
    kind: str
    batch: int
    macs: int
    bytes_weights: int
    bytes_input: int
    bytes_output: int
    dtype_bytes: int
    out_elements: int
    c_in: int = 0
    c_out: int = 0
    groups: int = 1
    kernel: tuple[int, int] = (1, 1)
    gemm_m: int = 0
    gemm_n: int = 0
    gemm_k: int = 0
    h_out: int = 0
    w_out: int = 0
    stride: tuple[int, int] = (1, 1)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "op_class", OpClass(self.op_class))
        except ValueError:
            raise RooflineError(
                f"op {self.name!r}: unknown op_class {self.op_class!r}; use one of {', '.join(OP_CLASSES)}"
            ) from None
        for key in ("batch", "macs", "bytes_weights", "bytes_input", "bytes_output", "out_elements"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise RooflineError(f"op {self.name!r}: {key} must be a non-negative integer, got {value!r}")
        if self.dtype_bytes not in (1, 2, 4, 8):
            raise RooflineError(f"op {self.name!r}: dtype_bytes must be 1, 2, 4 or 8, got {self.dtype_bytes!r}")
        for key in ("h_out", "w_out"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise RooflineError(f"op {self.name!r}: {key} must be a non-negative integer, got {value!r}")
        stride = self.stride
        if not (
            isinstance(stride, tuple | list)
            and len(stride) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in stride)
        ):
            raise RooflineError(f"op {self.name!r}: stride must be a pair of positive integers, got {stride!r}")
        object.__setattr__(self, "stride", (int(stride[0]), int(stride[1])))

    @property
    def flops(self) -> int:
        """FLOPs: 2 per multiply-add."""
        return 2 * self.macs

    @property
    def bytes_total(self) -> int:
        """Bytes moved: weights + input + output."""
        return self.bytes_weights + self.bytes_input + self.bytes_output

    @property
    def intensity(self) -> float:
        """Arithmetic intensity in FLOP/byte (0 for an op that moves no bytes)."""
        total = self.bytes_total
        return self.flops / total if total else 0.0

    def with_dtype_bytes(self, dtype_bytes: int) -> OpSpec:
        """The same op with every tensor stored at ``dtype_bytes`` per element (e.g. 2 for fp16)."""
        if dtype_bytes not in (1, 2, 4, 8):
            raise RooflineError(f"dtype_bytes must be 1, 2, 4 or 8, got {dtype_bytes!r}")

        def scale(n: int) -> int:
            return n // self.dtype_bytes * dtype_bytes

        return replace(
            self,
            dtype_bytes=dtype_bytes,
            bytes_weights=scale(self.bytes_weights),
            bytes_input=scale(self.bytes_input),
            bytes_output=scale(self.bytes_output),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus the derived ``flops``, ``bytes_total`` and ``intensity``."""
        return {
            "name": self.name,
            "op_class": self.op_class.value,
            "kind": self.kind,
            "batch": self.batch,
            "macs": self.macs,
            "flops": self.flops,
            "bytes_weights": self.bytes_weights,
            "bytes_input": self.bytes_input,
            "bytes_output": self.bytes_output,
            "bytes_total": self.bytes_total,
            "intensity": self.intensity,
            "dtype_bytes": self.dtype_bytes,
            "out_elements": self.out_elements,
            "c_in": self.c_in,
            "c_out": self.c_out,
            "groups": self.groups,
            "kernel": list(self.kernel),
            "gemm_m": self.gemm_m,
            "gemm_n": self.gemm_n,
            "gemm_k": self.gemm_k,
            "h_out": self.h_out,
            "w_out": self.w_out,
            "stride": list(self.stride),
        }


def _positive(name: str, **values: Any) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RooflineError(f"op {name!r}: {key} must be a positive integer, got {value!r}")


def _pair(name: str, kernel: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(kernel, int) and not isinstance(kernel, bool):
        kernel = (kernel, kernel)
    if not (isinstance(kernel, tuple | list) and len(kernel) == 2):
        raise RooflineError(f"op {name!r}: kernel must be an int or a (kh, kw) pair, got {kernel!r}")
    kh, kw = kernel
    _positive(name, kh=kh, kw=kw)
    return int(kh), int(kw)


def _dtype(name: str, dtype_bytes: int) -> int:
    if dtype_bytes not in (1, 2, 4, 8):
        raise RooflineError(f"op {name!r}: dtype_bytes must be 1, 2, 4 or 8, got {dtype_bytes!r}")
    return dtype_bytes


def conv2d_op(
    name: str,
    batch: int,
    c_in: int,
    c_out: int,
    h_in: int,
    w_in: int,
    h_out: int,
    w_out: int,
    kernel: int | tuple[int, int] = (1, 1),
    groups: int = 1,
    bias: bool = False,
    dtype_bytes: int = 4,
    stride: int | tuple[int, int] | None = None,
) -> OpSpec:
    """A 2-D convolution. ``bias`` defaults to False (convs followed by BN have none). ``stride``: the
    conv's stride; ``None`` infers it from the map sizes (``round(h_in / h_out)``; pass it for convs whose
    input carries relocated padding, which is larger than ``stride * h_out``).

    Classified as depthwise (``groups == c_in == c_out > 1``), pointwise (1x1, ``groups == 1``),
    dense (larger kernel, ``groups == 1``) or grouped (anything else).
    """
    _positive(
        name,
        batch=batch,
        c_in=c_in,
        c_out=c_out,
        h_in=h_in,
        w_in=w_in,
        h_out=h_out,
        w_out=w_out,
        groups=groups,
    )
    kh, kw = _pair(name, kernel)
    _dtype(name, dtype_bytes)
    if stride is None:
        stride = (max(1, round(h_in / h_out)), max(1, round(w_in / w_out)))
    elif isinstance(stride, int) and not isinstance(stride, bool):
        stride = (stride, stride)
    if not (isinstance(stride, tuple | list) and len(stride) == 2):
        raise RooflineError(f"op {name!r}: stride must be an int or a pair of positive integers, got {stride!r}")
    if c_in % groups or c_out % groups:
        raise RooflineError(
            f"op {name!r}: groups={groups} must divide c_in={c_in} and c_out={c_out}; check the layer shape"
        )
    if groups == 1:
        op_class = OpClass.POINTWISE_CONV if (kh, kw) == (1, 1) else OpClass.DENSE_CONV
    elif groups == c_in == c_out:
        op_class = OpClass.DEPTHWISE_CONV
    else:
        op_class = OpClass.GROUPED_CONV
    cin_g = c_in // groups
    out_elements = batch * c_out * h_out * w_out
    macs = out_elements * cin_g * kh * kw
    weights = c_out * cin_g * kh * kw + (c_out if bias else 0)
    return OpSpec(
        name=name,
        op_class=op_class,
        kind="conv",
        batch=batch,
        macs=macs,
        bytes_weights=weights * dtype_bytes,
        bytes_input=batch * c_in * h_in * w_in * dtype_bytes,
        bytes_output=out_elements * dtype_bytes,
        dtype_bytes=dtype_bytes,
        out_elements=out_elements,
        c_in=c_in,
        c_out=c_out,
        groups=groups,
        kernel=(kh, kw),
        gemm_m=batch * h_out * w_out,
        gemm_n=c_out // groups,
        gemm_k=cin_g * kh * kw,
        h_out=h_out,
        w_out=w_out,
        stride=tuple(stride),
    )


def linear_op(
    name: str, batch: int, in_features: int, out_features: int, bias: bool = True, dtype_bytes: int = 4
) -> OpSpec:
    """A fully connected layer on ``batch`` rows. ``bias`` defaults to True (as ``nn.Linear``)."""
    _positive(name, batch=batch, in_features=in_features, out_features=out_features)
    _dtype(name, dtype_bytes)
    weights = in_features * out_features + (out_features if bias else 0)
    return OpSpec(
        name=name,
        op_class=OpClass.LINEAR,
        kind="linear",
        batch=batch,
        macs=batch * in_features * out_features,
        bytes_weights=weights * dtype_bytes,
        bytes_input=batch * in_features * dtype_bytes,
        bytes_output=batch * out_features * dtype_bytes,
        dtype_bytes=dtype_bytes,
        out_elements=batch * out_features,
        c_in=in_features,
        c_out=out_features,
        gemm_m=batch,
        gemm_n=out_features,
        gemm_k=in_features,
    )


def elementwise_op(
    name: str,
    kind: str,
    numel: int,
    n_inputs: int = 1,
    dtype_bytes: int = 4,
    *,
    batch: int = 1,
    channels: int = 0,
) -> OpSpec:
    """An elementwise op over ``numel`` output elements (the whole batch).

    ``kind``: ``"bn"`` (eval-mode batch norm; reads 4 per-channel vectors, so pass ``channels``),
    ``"act"``, ``"add"`` (``n_inputs`` operands, e.g. 2 for a residual add), ``"mul"`` or
    ``"other"``. Reads ``n_inputs * numel`` elements and writes ``numel``.
    """
    _positive(name, numel=numel, n_inputs=n_inputs, batch=batch)
    _dtype(name, dtype_bytes)
    if kind not in _ELEMENTWISE_KINDS:
        raise RooflineError(
            f"op {name!r}: elementwise kind must be one of {', '.join(_ELEMENTWISE_KINDS)}, got {kind!r}"
        )
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 0:
        raise RooflineError(f"op {name!r}: channels must be a non-negative integer, got {channels!r}")
    macs_per_element = max(1, n_inputs - 1)
    weights = 4 * channels if kind == "bn" else 0
    return OpSpec(
        name=name,
        op_class=OpClass.ELEMENTWISE,
        kind=kind,
        batch=batch,
        macs=numel * macs_per_element,
        bytes_weights=weights * dtype_bytes,
        bytes_input=n_inputs * numel * dtype_bytes,
        bytes_output=numel * dtype_bytes,
        dtype_bytes=dtype_bytes,
        out_elements=numel,
        c_in=channels,
        c_out=channels,
    )


def pooling_op(
    name: str,
    batch: int,
    channels: int,
    h_in: int,
    w_in: int,
    h_out: int,
    w_out: int,
    kernel: int | tuple[int, int],
    kind: str = "avg",
    dtype_bytes: int = 4,
) -> OpSpec:
    """Average or max pooling (``kind`` ``"avg"`` or ``"max"``). Global average pooling is
    ``kernel=(h_in, w_in)``, ``h_out = w_out = 1``."""
    _positive(name, batch=batch, channels=channels, h_in=h_in, w_in=w_in, h_out=h_out, w_out=w_out)
    kh, kw = _pair(name, kernel)
    _dtype(name, dtype_bytes)
    if kind not in ("avg", "max"):
        raise RooflineError(f"op {name!r}: pooling kind must be 'avg' or 'max', got {kind!r}")
    out_elements = batch * channels * h_out * w_out
    return OpSpec(
        name=name,
        op_class=OpClass.POOLING,
        kind=f"{kind}_pool",
        batch=batch,
        macs=out_elements * kh * kw,
        bytes_weights=0,
        bytes_input=batch * channels * h_in * w_in * dtype_bytes,
        bytes_output=out_elements * dtype_bytes,
        dtype_bytes=dtype_bytes,
        out_elements=out_elements,
        c_in=channels,
        c_out=channels,
        kernel=(kh, kw),
    )
