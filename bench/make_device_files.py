"""Generate roofline/devices/<name>.json from the GPU spec table (gpus.csv).

Usage (from the repo root)::

    python bench/make_device_files.py [CSV] [--out roofline/devices]

CSV defaults to ../shared/brief/gpus.csv relative to the repo root. Every file is rewritten
(atomically, through roofline.save_device) and re-read through roofline's validator; files of
devices no longer in the table are left alone. The script prints the files it wrote.

Assumptions beyond the table (also written into each file's ``notes``):

- CUDA-core (non-tensor) FP16 = 2x FP32 from Pascal on, except: GA100 (A100) 4x, GA10x Ampere
  (A10, A10G, RTX 3090) and Ada (L4, RTX 4090) 1x (NVIDIA architecture whitepapers). Jetson TX2's
  "fp16_tc" column is its CUDA-core FP16 rate (the part has no tensor cores).
- Tensor FP16 on GeForce parts is the FP32-accumulate rate (as the table states), which is what
  PyTorch uses.
- launch_overhead_us: 5 us for discrete GPUs, 10 us for Jetson modules (slower host CPUs).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from roofline.devices import DeviceSpec, Measured, Peaks, load_device, save_device  # noqa: E402

DEFAULT_CSV = REPO.parent / "shared" / "brief" / "gpus.csv"
DEFAULT_OUT = REPO / "roofline" / "devices"

LAUNCH_US_DISCRETE = 5.0
LAUNCH_US_JETSON = 10.0

ALIASES: dict[str, list[str]] = {
    "v100-sxm2": ["v100", "v100-sxm", "tesla-v100", "v100-sxm2-16gb"],
    "v100-pcie": ["v100-pcie-16gb", "tesla-v100-pcie"],
    "t4": ["tesla-t4"],
    "a10": ["nvidia-a10"],
    "a10g": ["nvidia-a10g"],
    "a100-40gb-sxm": ["a100", "a100-sxm", "a100-40gb", "a100-sxm4-40gb"],
    "a100-80gb-sxm": ["a100-80gb", "a100-sxm4-80gb"],
    "l4": ["nvidia-l4"],
    "rtx2080ti": ["2080ti", "rtx-2080-ti", "geforce-rtx-2080-ti"],
    "rtx3090": ["3090", "rtx-3090", "geforce-rtx-3090"],
    "rtx4090": ["4090", "rtx-4090", "geforce-rtx-4090"],
    "h100-sxm": ["h100", "h100-sxm5", "h100-80gb-hbm3"],
    "h100-pcie": ["h100-pcie-80gb"],
    "h200": ["h200-sxm", "h200-141gb", "nvidia-h200"],
    "jetson-tx2": ["tx2"],
    "jetson-agx-orin-64gb": ["orin", "agx-orin", "jetson-orin", "jetson-agx-orin"],
}

# CUDA-core FP16 : FP32 ratio where it differs from the Pascal-on default of 2.
FP16_RATIO: dict[str, tuple[float, str]] = {
    "a100-40gb-sxm": (4.0, "GA100 non-tensor FP16 is 4x FP32 (78 TFLOPS, A100 whitepaper)"),
    "a100-80gb-sxm": (4.0, "GA100 non-tensor FP16 is 4x FP32 (78 TFLOPS, A100 whitepaper)"),
    "a10": (1.0, "GA10x non-tensor FP16 equals FP32 (GA102 whitepaper)"),
    "a10g": (1.0, "GA10x non-tensor FP16 equals FP32 (GA102 whitepaper)"),
    "rtx3090": (1.0, "GA10x non-tensor FP16 equals FP32 (GA102 whitepaper)"),
    "l4": (1.0, "Ada non-tensor FP16 equals FP32 (Ada whitepaper)"),
    "rtx4090": (1.0, "Ada non-tensor FP16 equals FP32 (Ada whitepaper)"),
}
NO_TENSOR_CORES = {"jetson-tx2"}


def _num(text: str) -> float | None:
    text = text.strip()
    return float(text) if text else None


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    lines = [ln for ln in csv_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    data = [ln for ln in lines if not ln.lstrip().startswith("#")]
    return list(csv.DictReader(data))


def spec_from_row(row: dict[str, str]) -> DeviceSpec:
    name = row["name"].strip()
    fp32 = _num(row["fp32_tflops"])
    fp16_col = _num(row["fp16_tc_tflops"])
    notes = [f"Datasheet figures from gpus.csv (dense, no sparsity; confidence {row['confidence'].strip()})."]
    if row["notes"].strip():
        notes.append(f"gpus.csv: {row['notes'].strip()}")
    if name in NO_TENSOR_CORES:
        tensor_fp16 = None
        cuda_fp16 = fp16_col
        notes.append("No tensor cores: the table's FP16 figure is the CUDA-core FP16 rate.")
    else:
        tensor_fp16 = fp16_col
        ratio, why = FP16_RATIO.get(name, (2.0, "CUDA-core FP16 assumed 2x FP32 (Pascal-on default)"))
        cuda_fp16 = round(fp32 * ratio, 3) if fp32 is not None else None
        notes.append(f"cuda_fp16 = {ratio:g} x cuda_fp32: {why}.")
    jetson = name.startswith("jetson")
    launch = LAUNCH_US_JETSON if jetson else LAUNCH_US_DISCRETE
    notes.append(
        f"launch_overhead_us = {launch:g} us: default for "
        f"{'Jetson modules (slower host CPU)' if jetson else 'discrete GPUs'}; replace with a measurement."
    )
    return DeviceSpec(
        name=name,
        kind="gpu",
        sms=int(row["sms"]),
        boost_mhz=_num(row["boost_mhz"]),
        mem_bandwidth_gbps=_num(row["mem_bw_gbs"]),
        l2_mb=_num(row["l2_mb"]),
        mem_gb=_num(row["mem_gb"]),
        launch_overhead_us=launch,
        peaks_tflops=Peaks(
            cuda_fp32=fp32,
            cuda_fp16=cuda_fp16,
            tensor_fp16=tensor_fp16,
            tensor_bf16=_num(row["bf16_tc_tflops"]),
            tensor_tf32=_num(row["tf32_tflops"]),
        ),
        peaks_source="datasheet",
        aliases=tuple(ALIASES.get(name, [])),
        measured=Measured(),
        calibration=None,
        confidence=row["confidence"].strip(),
        notes=tuple(notes),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", type=Path, default=DEFAULT_CSV, help="path to gpus.csv")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON files")
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        print(f"error: {args.csv} not found; pass the path to gpus.csv", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for row in read_rows(args.csv):
        spec = spec_from_row(row)
        path = save_device(spec, args.out / f"{spec.name}.json")
        if load_device(path) != spec:
            print(f"error: {path} does not read back equal", file=sys.stderr)
            return 1
        print(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
