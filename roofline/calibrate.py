"""Fit the model's efficiencies and launch cost to measured per-op latencies.

Per op i of class k the model is (see :mod:`roofline.model`)::

    t_i = max(C_i / e_k, M_i / m_k) + L

with ``C_i`` the compute time at efficiency 1 (wave factor included), ``M_i`` the memory time at
efficiency 1, ``e_k`` the compute efficiency of class k, ``m_k`` the memory efficiency (one shared
value, or one per class with ``per_class_memory=True``) and ``L`` the launch cost. A conv that the
runtime's policy prices as a multi-kernel algorithm (:mod:`roofline.algorithms`: nonfused Winograd, FFT)
is the sum of its stages, ``sum_s max(C_is / e_ks, M_is / m_ks) + n_i L``, each stage with the class it runs
as (transforms: elementwise); the algorithm is the one chosen at the default efficiencies.

:func:`fit_calibration` minimises the relative error, i.e. residuals ``log(t_pred / t_meas)``,
with ``scipy.optimize.least_squares`` (trust-region reflective, bounds, soft-L1 loss so a few
outliers do not dominate), over ``log(1/e_k)``, ``log(1/m_k)`` and ``L``. A weak prior
(``prior_weight``) pulls each log-efficiency toward its default, so a parameter the data cannot
determine (e.g. the compute efficiency of a class whose ops are all memory-bound) stays at the
default instead of drifting. Two starts (the defaults, and per-class medians of measured/model
ratios) are tried and the better fit kept.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence

import numpy as np

from roofline.devices import Calibration, DeviceSpec, load_device
from roofline.errors import RooflineError
from roofline.model import _raw_times, algorithm_stages, choose_algorithm, conv_policy, efficiencies, predict_op
from roofline.ops import OpSpec

__all__ = [
    "COMPUTE_EFFICIENCY_BOUNDS",
    "DEFAULT_PRIOR_WEIGHT",
    "MEMORY_EFFICIENCY_BOUNDS",
    "Calibration",
    "fit_calibration",
    "median_abs_pct_error",
]

#: Allowed range of fitted compute efficiencies (above 1 only if a datasheet peak is conservative).
COMPUTE_EFFICIENCY_BOUNDS = (0.005, 2.0)
#: Allowed range of fitted memory efficiencies (above 1 happens when tensors stay in L2).
MEMORY_EFFICIENCY_BOUNDS = (0.02, 4.0)
#: Weight of the pull toward default efficiencies, per parameter, in log units.
DEFAULT_PRIOR_WEIGHT = 0.01
_SOFT_L1_SCALE = 0.1  # residuals (log ratio) beyond ~10% count linearly, not quadratically
_MIN_OPS = 3


def median_abs_pct_error(predicted_ms: Sequence[float], measured_ms: Sequence[float]) -> float:
    """Median of ``|predicted - measured| / measured`` in percent."""
    p = np.asarray(predicted_ms, dtype=float)
    m = np.asarray(measured_ms, dtype=float)
    if p.shape != m.shape or p.size == 0:
        raise RooflineError("predicted and measured need the same, non-zero length")
    return float(np.median(np.abs(p - m) / m) * 100.0)


def fit_calibration(
    device: DeviceSpec | str,
    ops: Sequence[OpSpec],
    measured_ms: Sequence[float],
    precision: str = "fp32",
    *,
    per_class_memory: bool = False,
    fit_launch: bool = True,
    prior_weight: float = DEFAULT_PRIOR_WEIGHT,
    notes: str = "",
    date: str | None = None,
    large_thresholds_mb: Sequence[float] | None = (),
    time_weighted: bool = False,
    conv_algorithms: str | None = None,
) -> Calibration:
    """Fit per-class compute efficiencies, memory efficiency and launch cost to measurements.

    ``measured_ms[i]`` is the measured time of ``ops[i]`` (unfused, one kernel per op, same
    precision and dtype). Classes present in ``ops`` get fitted values; others keep defaults at
    prediction time. ``fit_launch=False`` keeps the device's ``launch_overhead_us``. ``notes``
    should record how the times were taken (layout, cudnn.benchmark, TF32 flags, batch).
    ``large_thresholds_mb``: candidate sizes (MB moved) above which an op's memory time gets an extra
    fitted factor — a second memory regime for working sets beyond the caches (on CPUs, big fresh outputs
    also pay page faults). Each candidate is fitted and the best kept, together with one regime. ``None``
    picks candidates from the device (CPU: 8-256 MB; GPU: its L2 size and twice that).
    ``time_weighted``: weigh each op's log error by sqrt(its time / the median time), clipped to
    [1/3, 3], so the long ops that decide a network's latency count more.
    Returns a :class:`~roofline.devices.Calibration`; attach it with
    ``spec.with_calibration(cal)``.
    """
    spec = device if isinstance(device, DeviceSpec) else load_device(device)
    ops = list(ops)
    t_meas = np.asarray(list(measured_ms), dtype=float)
    if len(ops) != t_meas.size:
        raise RooflineError(f"got {len(ops)} ops but {t_meas.size} measurements; pass one time per op")
    if len(ops) < _MIN_OPS:
        raise RooflineError(f"need at least {_MIN_OPS} measured ops to fit a calibration, got {len(ops)}")
    if not np.all(np.isfinite(t_meas)) or np.any(t_meas <= 0):
        bad = int(np.flatnonzero(~np.isfinite(t_meas) | (t_meas <= 0))[0])
        raise RooflineError(
            f"measured_ms[{bad}] = {t_meas[bad]!r} for op {ops[bad].name!r}: times must be positive milliseconds"
        )
    if not (isinstance(prior_weight, int | float) and prior_weight >= 0):
        raise RooflineError(f"prior_weight must be a non-negative number, got {prior_weight!r}")

    if large_thresholds_mb is None:
        if spec.kind == "cpu":
            large_thresholds_mb = (8.0, 16.0, 32.0, 64.0, 100.0, 150.0, 256.0)
        else:
            large_thresholds_mb = (spec.l2_mb, 2 * spec.l2_mb) if spec.l2_mb else ()
    spec = spec.with_calibration(None)  # fit against the defaults, not an attached calibration
    policy = conv_policy(spec, conv_algorithms)
    stages = _op_stages(spec, ops, precision, policy)
    op_bytes = np.array([op.bytes_total for op in ops], dtype=float)
    best_fit = None
    for threshold in [None, *large_thresholds_mb]:
        large = op_bytes > threshold * 1e6 if threshold else np.zeros(len(ops), dtype=bool)
        if threshold and not (large.any() and (~large).any()):
            continue
        fit = _fit_once(
            spec,
            ops,
            precision,
            t_meas,
            stages,
            large,
            per_class_memory,
            fit_launch,
            prior_weight,
            time_weighted,
        )
        if best_fit is None or fit[0] < best_fit[0] - 1e-9:
            best_fit = (fit[0], threshold, *fit[1:])
    if best_fit is None:  # pragma: no cover - an invariant
        raise RuntimeError("roofline calibration: no fit was evaluated (a bug)")
    _, threshold, compute_eff, memory_eff, launch_ms, factor, after = best_fit
    before = [predict_op(op, spec, precision, None, policy).total_ms for op in ops]
    return Calibration(
        device=spec.name,
        precision=precision,
        compute_efficiency={c: round(v, 6) for c, v in compute_eff.items()},
        memory_efficiency={c: round(v, 6) for c, v in memory_eff.items()},
        launch_ms=round(launch_ms, 6),
        n_ops=len(ops),
        median_abs_pct_error=round(median_abs_pct_error(after, t_meas), 4),
        median_abs_pct_error_uncalibrated=round(median_abs_pct_error(before, t_meas), 4),
        date=date or _dt.date.today().isoformat(),
        notes=notes,
        large_bytes_mb=float(threshold) if threshold and factor > 1.0 + 1e-6 else None,
        large_memory_factor=round(factor, 6) if threshold and factor > 1.0 + 1e-6 else 1.0,
    )


def _op_stages(spec: DeviceSpec, ops: Sequence[OpSpec], precision: str, policy: str) -> list[tuple[list, int]]:
    """Per op: its stages as (compute_ms, memory_ms at efficiency 1, compute class, memory class) and its kernel
    count, for the algorithm ``policy`` picks at the default efficiencies."""
    base = efficiencies(spec, precision)
    out = []
    for op in ops:
        unit, raw_c, raw_m, waves = _raw_times(op, spec, precision)
        alg, _ = choose_algorithm(op, spec, precision, base, policy)
        if alg is None:
            cls = op.op_class.value
            out.append(([(raw_c, raw_m, cls, cls)], 1))
        else:
            out.append((algorithm_stages(op, alg, spec, precision, unit, waves), alg.kernels))
    return out


def _fit_once(spec, ops, precision, t_meas, stages, large, per_class_memory, fit_launch, prior_weight, time_weighted):
    """One least-squares fit with the slow memory regime on the ops flagged ``large`` (none: no regime).
    Returns (cost, compute_eff, memory_eff, launch_ms, large_factor, predicted_ms)."""
    from scipy.optimize import least_squares  # 0.6 s to import: only when fitting

    base = efficiencies(spec, precision)
    with_regime = bool(large.any())
    classes = sorted({st[2] for sts, _ in stages for st in sts} | {op.op_class.value for op in ops})
    cls_index = np.array([classes.index(op.op_class.value) for op in ops])
    n_s = max(len(sts) for sts, _ in stages)
    c_st = np.zeros((len(ops), n_s))  # per op and stage, at efficiency 1 (padding stages cost 0)
    m_st = np.zeros((len(ops), n_s))
    ci_st = np.zeros((len(ops), n_s), dtype=int)
    for i, (sts, _) in enumerate(stages):
        for j, (c, m, c_cls, _m_cls) in enumerate(sts):
            c_st[i, j], m_st[i, j], ci_st[i, j] = max(c, 1e-30), max(m, 1e-30), classes.index(c_cls)
    kernels = np.array([k for _, k in stages], dtype=float)
    c_raw = c_st.sum(axis=1)  # per op, for the data-driven start
    m_raw0 = m_st.sum(axis=1)
    mem_names = classes if per_class_memory else ["*"]
    mem_index = cls_index if per_class_memory else np.zeros(len(ops), dtype=int)
    mi_st = ci_st if per_class_memory else np.zeros_like(ci_st)
    n_c, n_m = len(classes), len(mem_names)

    # parameters: log(1/e_k) for k in classes, log(1/m_j), then L (ms)
    prior = np.concatenate(
        [
            np.log([1.0 / base.compute[c] for c in classes]),
            np.log([1.0 / (base.memory[c] if c != "*" else base.memory[classes[0]]) for c in mem_names]),
        ]
    )
    lo = np.concatenate(
        [
            np.full(n_c, -math.log(COMPUTE_EFFICIENCY_BOUNDS[1])),
            np.full(n_m, -math.log(MEMORY_EFFICIENCY_BOUNDS[1])),
        ]
    )
    hi = np.concatenate(
        [
            np.full(n_c, -math.log(COMPUTE_EFFICIENCY_BOUNDS[0])),
            np.full(n_m, -math.log(MEMORY_EFFICIENCY_BOUNDS[0])),
        ]
    )
    if with_regime:  # log of the slow-regime factor, >= 0
        prior = np.append(prior, 0.0)
        lo = np.append(lo, 0.0)
        hi = np.append(hi, math.log(100.0))
    n_p = len(prior)
    launch0 = min(base.launch_ms, 0.5 * float(t_meas.min()))
    launch_hi = float(t_meas.min())
    log_meas = np.log(t_meas)
    # long ops weigh more (up to 3x, down to 1/3): they decide whole-network latency
    weight = np.clip(np.sqrt(t_meas / np.median(t_meas)), 1 / 3, 3.0) if time_weighted else np.ones_like(t_meas)
    sqrt_w = math.sqrt(prior_weight)

    def predict(x: np.ndarray) -> np.ndarray:
        a = np.exp(x[:n_c])[ci_st]
        b = np.exp(x[n_c : n_c + n_m])[mi_st]
        m_raw = m_st * np.where(large, math.exp(x[n_c + n_m]), 1.0)[:, None] if with_regime else m_st
        launch = x[-1] if fit_launch else base.launch_ms
        return np.maximum(c_st * a, m_raw * b).sum(axis=1) + launch * kernels

    def residuals(x: np.ndarray) -> np.ndarray:
        data = (np.log(np.maximum(predict(x), 1e-12)) - log_meas) * weight
        return np.concatenate([data, sqrt_w * (x[:n_p] - prior)])

    # data-driven start: each class's compute term explains its slowest-relative ops, the memory
    # term is set so that no op is predicted slower than measured
    launch_used = launch0 if fit_launch else base.launch_ms
    busy = np.maximum(t_meas - launch_used, 1e-9)
    guess = prior.copy()
    m_raw = m_raw0
    for k in range(n_c):
        if (cls_index == k).any():  # (a class only some ops' transform stages run as keeps its prior)
            guess[k] = math.log(float(np.median(busy[cls_index == k] / c_raw[cls_index == k])))
    for j in range(n_m):
        if (mem_index == j).any():  # (likewise a memory class only transform stages run as)
            guess[n_c + j] = math.log(float(np.min(busy[mem_index == j] / m_raw[mem_index == j])))
    if fit_launch:
        lo = np.append(lo, 0.0)
        hi = np.append(hi, launch_hi)
    best = None
    for start in (prior, guess):
        x0 = np.clip(start, lo[:n_p] + 1e-9, hi[:n_p] - 1e-9)
        if fit_launch:
            x0 = np.append(x0, min(launch0, launch_hi * (1 - 1e-9)))
        result = least_squares(
            residuals,
            x0,
            bounds=(lo, hi),
            method="trf",
            loss="soft_l1",
            f_scale=_SOFT_L1_SCALE,
            x_scale="jac",
            max_nfev=2000,
        )
        if best is None or result.cost < best.cost:
            best = result
    if best is None:  # pragma: no cover - two starts always run
        raise RuntimeError("roofline calibration: no start was evaluated (a bug)")
    x = best.x
    compute_eff = {c: float(1.0 / math.exp(x[k])) for k, c in enumerate(classes)}
    if per_class_memory:
        memory_eff = {c: float(1.0 / math.exp(x[n_c + k])) for k, c in enumerate(classes)}
    else:
        shared = float(1.0 / math.exp(x[n_c]))
        memory_eff = dict.fromkeys(classes, shared)
    launch_ms = float(x[-1]) if fit_launch else base.launch_ms
    factor = float(math.exp(x[n_c + n_m])) if with_regime else 1.0
    return float(best.cost), compute_eff, memory_eff, launch_ms, factor, predict(x)
