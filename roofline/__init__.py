"""roofline: a standalone roofline latency model for CNN layers on GPUs and CPUs.

Build ops (:mod:`roofline.ops`), pick a device (:mod:`roofline.devices`), predict per-op and
network latency (:mod:`roofline.model`), fit efficiencies to measurements
(:mod:`roofline.calibrate`) and draw roofline and latency plots (:mod:`roofline.plot`).
Counting convention: FLOPs = 2 x MACs. See docs/roofline.md.
"""

from roofline.algorithms import CONV_POLICIES, Algorithm, Stage, candidate_algorithms
from roofline.calibrate import fit_calibration, median_abs_pct_error
from roofline.devices import (
    PEAK_UNITS,
    PRECISIONS,
    SCHEMA_VERSION,
    Calibration,
    DeviceSpec,
    Measured,
    Peaks,
    list_devices,
    load_device,
    save_device,
)
from roofline.errors import RooflineError
from roofline.measure import measure_local_device
from roofline.model import (
    DEFAULT_COMPUTE_EFFICIENCY,
    DEFAULT_MEMORY_EFFICIENCY,
    MEASURED_MEMORY_EFFICIENCY,
    TENSOR_CORE_MIN_CHANNELS,
    NetworkTime,
    OpTime,
    conv_policy,
    predict_fused_op,
    predict_network,
    predict_op,
    predict_ops,
    select_unit,
    thread_blocks,
    wave_factor,
)
from roofline.ops import OP_CLASSES, OpClass, OpSpec, conv2d_op, elementwise_op, linear_op, pooling_op

__all__ = [
    "CONV_POLICIES",
    "DEFAULT_COMPUTE_EFFICIENCY",
    "DEFAULT_MEMORY_EFFICIENCY",
    "MEASURED_MEMORY_EFFICIENCY",
    "OP_CLASSES",
    "PEAK_UNITS",
    "PRECISIONS",
    "SCHEMA_VERSION",
    "TENSOR_CORE_MIN_CHANNELS",
    "Algorithm",
    "Calibration",
    "DeviceSpec",
    "Measured",
    "NetworkTime",
    "OpClass",
    "OpSpec",
    "OpTime",
    "Peaks",
    "RooflineError",
    "RooflinePoint",
    "Stage",
    "candidate_algorithms",
    "conv2d_op",
    "conv_policy",
    "elementwise_op",
    "fit_calibration",
    "linear_op",
    "list_devices",
    "load_device",
    "measure_local_device",
    "median_abs_pct_error",
    "plot_latency_bars",
    "plot_roofline",
    "points_from_ops",
    "pooling_op",
    "predict_network",
    "predict_fused_op",
    "predict_op",
    "predict_ops",
    "save_device",
    "select_unit",
    "thread_blocks",
    "wave_factor",
]

_PLOT_NAMES = ("RooflinePoint", "plot_latency_bars", "plot_roofline", "points_from_ops")


def __getattr__(name: str):  # noqa: ANN202 - module attribute hook
    """Import the plotting helpers (and matplotlib) only when first used."""
    if name in _PLOT_NAMES:
        from roofline import plot

        return getattr(plot, name)
    raise AttributeError(f"module 'roofline' has no attribute {name!r}")
