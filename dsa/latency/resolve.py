"""Which cost model prices a network: ``--gpu`` (its roofline), ``--profile`` (a measured profile: its device,
calibration and times), or -- with ``--gpu`` -- a profile under ``profiles/<device>/`` that matches the network,
input size, batch and precision. One policy for ``dsa plan``, ``evaluate``, ``roofline``, ``report`` and
``importance``; what it chose is returned as notes for the CLI to show, never printed here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import roofline as rl
from dsa.errors import ArtifactError, DsaError
from dsa.formats.profile import Profile, device_profiles, find_profile
from dsa.ir import Analysis
from dsa.latency.costs import CostModel
from dsa.latency.evaluate import activation_savings, cost_model
from dsa.vocab import DEFAULT_DEVICE, DEFAULT_RUNTIME, RUNTIMES, TACTIC_RUNTIMES

#: runtimes the roofline prices without a profile: eager kernels, and TensorRT's fused kernels at their fastest
#: algorithm (no adapter measures TensorRT here)
ROOFLINE_RUNTIMES: tuple[str, ...] = (DEFAULT_RUNTIME, *sorted(TACTIC_RUNTIMES))

PROFILES_DIR = Path("profiles")
DEFAULT_BATCH = 128
DEFAULT_PRECISION = "fp32"


@dataclass(frozen=True)
class Pricing:
    """The resolved setting: device, batch, precision, the profile used (if any), and what to tell the user."""

    device: str
    batch: int
    precision: str
    profile: Profile | None
    notes: tuple[str, ...] = ()  # "using the measured profile ..."
    warnings: tuple[str, ...] = ()  # "the profile ... is incomplete ..."
    runtime: str = DEFAULT_RUNTIME

    def costs(self, a: Analysis) -> CostModel:
        return cost_model(a, self.device, self.batch, self.precision, self.profile, self.runtime)


def incomplete_note(prof: Profile, path: str | Path) -> tuple[str, ...]:
    if prof.complete:
        return ()
    return (
        f"the profile {path} is incomplete (its measurement was interrupted: {len(prof.ops)} ops and "
        f"{len(prof.segments)} segments measured); what it lacks is predicted by the roofline",
    )


def measured_device(gpu: str, profiles_dir: Path = PROFILES_DIR) -> str:
    """The device name of ``gpu``: a known device (or a device JSON file), or a device known only through its
    measured profiles (e.g. ``local-cpu``)."""
    try:
        return rl.load_device(gpu).name
    except rl.RooflineError:
        if not (profiles_dir / gpu).is_dir():
            raise
        return gpu


def _find(a: Analysis, gpu: str, batch: int, precision: str, allow_incomplete: bool, profiles_dir: Path, runtime: str):
    device = measured_device(gpu, profiles_dir)
    found = find_profile(
        profiles_dir,
        device,
        a.fingerprint,
        batch,
        precision,
        input_size=a.input_size,
        allow_incomplete=allow_incomplete,
        runtime=runtime,
    )
    if found is None and device == gpu and not Path(gpu).exists() and gpu not in {d.name for d in rl.list_devices()}:
        raise rl.RooflineError(
            f"no profile under {profiles_dir}/{gpu}/ matches {a.model_name} at {a.input_size} px, batch {batch}, "
            f"{precision}; run `dsa profile` or pass --profile"
        )
    return found


def resolve(
    a: Analysis,
    *,
    gpu: str | None = None,
    profile: Profile | None = None,
    profile_path: str | Path = "",
    batch: int | None = None,
    precision: str | None = None,
    allow_incomplete: bool = False,
    profiles_dir: str | Path = PROFILES_DIR,
    runtime: str = DEFAULT_RUNTIME,
) -> Pricing:
    """With ``profile``: it must fit ``a`` (and ``batch`` / ``precision`` when given) and ``runtime``, and sets
    them. Else on ``gpu`` (default v100) at ``batch`` (128) and ``precision`` (fp32), with a matching measured
    profile of ``profiles_dir/<device>/`` taken under ``runtime`` where there is one. The roofline models eager
    kernels and TensorRT's (fused, fastest conv algorithm): another runtime needs a profile taken under it."""
    if runtime not in RUNTIMES:
        raise DsaError(f"unknown --runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if profile is not None:
        profile.check_for(a, batch, precision, allow_incomplete=allow_incomplete, path=profile_path, runtime=runtime)
        warnings = incomplete_note(profile, profile_path)
        return Pricing(profile.device_name, profile.batch_size, profile.precision, profile, (), warnings, runtime)
    gpu = gpu or DEFAULT_DEVICE
    batch, precision = batch or DEFAULT_BATCH, precision or DEFAULT_PRECISION
    if runtime in TACTIC_RUNTIMES:
        try:
            kind = rl.load_device(gpu).kind
        except rl.RooflineError:
            kind = "cpu"  # a device known only through its profiles: this machine's
        if kind != "gpu":
            raise DsaError(f"--runtime {runtime} runs on NVIDIA GPUs; {gpu} is not one: give --gpu G for a GPU")
    found = _find(a, gpu, batch, precision, allow_incomplete, Path(profiles_dir), runtime)
    if found is None:
        if runtime not in ROOFLINE_RUNTIMES:
            raise ArtifactError(
                f"no profile under {profiles_dir}/ of {a.model_name} at {a.input_size} px, batch {batch}, {precision} "
                f"was taken under {runtime}, and the roofline models eager PyTorch (and TensorRT on GPUs) only: give a "
                f"profile taken under {runtime}, or price for eager"
            )
        return Pricing(gpu, batch, precision, None, runtime=runtime)
    prof, path = found
    notes = (f"using the measured profile {path}",)
    return Pricing(gpu, batch, precision, prof, notes, incomplete_note(prof, path), runtime)


def savings(
    a: Analysis, *, gpu: str | None = None, profile: Profile | None = None, profiles_dir: str | Path = PROFILES_DIR
) -> dict[str, float]:
    """Predicted ms saved per removed activation (the ``gates`` proxy's latency term): on the profile's calibrated
    device (with its measured times when it was taken of this network at this size), else on ``gpu``'s roofline at
    batch 128, fp32. A ``gpu`` known only through its profiles (``local-cpu``) uses one of its eager profiles: a
    matching one if there is one."""
    if profile is None:
        gpu = gpu or DEFAULT_DEVICE
        try:
            return activation_savings(a, rl.load_device(gpu), DEFAULT_BATCH, DEFAULT_PRECISION)
        except rl.RooflineError:
            profs = [
                q for q, _ in device_profiles(profiles_dir, gpu) if q.complete and q.runtime_name == DEFAULT_RUNTIME
            ]
            if not profs:
                raise
            same = [q for q in profs if q.matches(a.fingerprint, q.batch_size, q.precision, a.input_size)]
            profile = (same or profs)[0]
    if not profile.complete:
        raise ArtifactError(
            "the profile's field 'complete' is false (its measurement was interrupted); profile again, or give --gpu"
        )
    same = profile.matches(a.fingerprint, profile.batch_size, profile.precision, a.input_size)
    return activation_savings(
        a, profile.device(), profile.batch_size, profile.precision, profile=profile if same else None
    )
