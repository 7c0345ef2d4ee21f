"""A cache of analysed networks (:class:`~dsa.ir.Analysis` as plain JSON), so that ``dsa plan``, ``evaluate``,
``pareto``, ``roofline`` and ``report`` on a warm cache import neither torch nor torchvision.

An entry is keyed by the model name, the input size, dsa's version and a hash of the sources that make an
analysis (``dsa/ir.py``, ``graph.py``, ``models.py``, ``cache.py``: an edited lowering rule invalidates every entry),
the installed versions of torch, torchvision and timm (the model definitions), and for ``--checkpoint`` the
checkpoint file's content (loading it is part of building the analysis: a checkpoint that does not fit fails
there, every time). Models built from user code (``package.module:factory``) are not cached: dsa cannot
tell that code changed without importing it. An entry that cannot be read or does not fit its key is a miss (and
is written anew); a cache that cannot be written is skipped. Entries live under ``$DSA_CACHE_DIR``, else
``$XDG_CACHE_HOME/dsa``, else ``~/.cache/dsa``; ``DSA_NO_CACHE=1`` (any value but empty, ``0``, ``false``,
``no``) turns the cache off. Entries are small JSON files (about 100 kB for MobileNetV2); nothing evicts them,
delete the folder to clear it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from dsa._version import __version__
from dsa.io import atomic_write_json
from dsa.ir import ActivationSite, Analysis, ConvInfo, Finding, Op

KIND = "dsa.analysis-cache"
SCHEMA_VERSION = 1
_PACKAGES = ("torch", "torchvision", "timm")


def cache_dir() -> Path | None:
    """Where entries live, or None when the cache is off (``DSA_NO_CACHE=1``)."""
    if os.environ.get("DSA_NO_CACHE", "").strip().lower() not in ("", "0", "false", "no"):
        return None
    if os.environ.get("DSA_CACHE_DIR"):
        return Path(os.environ["DSA_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "dsa"
    try:
        return Path.home() / ".cache" / "dsa"
    except RuntimeError:  # no home directory: no cache
        return None


def _versions() -> dict[str, str]:
    out = {}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = ""
    return out


_SOURCES = ("ir.py", "graph.py", "models.py", "cache.py")  # what an analysis is computed by


def _sources_digest() -> str:
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in _SOURCES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(model: str, input_size: int | None, checkpoint: str | Path | None = None) -> dict | None:
    """What an entry must match, or None for networks that are not cached (user models)."""
    if ":" in model:
        return None
    key: dict[str, Any] = {
        "model": model,
        "input_size": input_size,
        "dsa": __version__,
        "sources": _sources_digest(),
        "packages": _versions(),
    }
    if checkpoint is not None:
        try:
            key["checkpoint"] = _file_digest(Path(checkpoint))
        except OSError:  # missing or unreadable: not cached (loading it says what is wrong)
            return None
    return key


def _entry_path(directory: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in key["model"])[:64]
    return directory / "analysis" / f"{safe}-{digest}.json"


def _op_to_json(op: Op) -> dict:
    return dataclasses.asdict(op)


def _tuple(v):
    return tuple(v) if isinstance(v, list) else v


def _op_from_json(d: dict) -> Op:
    conv = d.get("conv")
    if conv is not None:
        conv = ConvInfo(
            conv["in_channels"],
            conv["out_channels"],
            tuple(conv["kernel"]),
            tuple(conv["stride"]),
            tuple(conv["dilation"]),
            conv["groups"],
            _tuple(conv["padding"]),
            conv["bias"],
        )
    return Op(
        d["id"],
        d["name"],
        d["kind"],
        d["node"],
        list(d["inputs"]),
        d["module_type"],
        d["block"],
        _tuple(d["shape"]),
        conv,
        _tuple(d["pad"]),
        d["bn_eps"],
        d["note"],
    )


def analysis_to_json(a: Analysis) -> dict:
    return {
        "model_name": a.model_name,
        "input_size": a.input_size,
        "fingerprint": a.fingerprint,
        "ops": [_op_to_json(op) for op in a.ops.values()],
        "activations": [dataclasses.asdict(s) for s in a.activations],
        "findings": [dataclasses.asdict(f) for f in a.findings],
    }


def analysis_from_json(d: dict) -> Analysis:
    """The analysis (without its traced graph module: what merges needs the model anyway)."""
    ops = {op.id: op for op in map(_op_from_json, d["ops"])}
    return Analysis(
        d["model_name"],
        d["input_size"],
        ops,
        [ActivationSite(**s) for s in d["activations"]],
        [Finding(**f) for f in d["findings"]],
        d["fingerprint"],
    )


def load(key: dict | None) -> Analysis | None:
    """The cached analysis for ``key``, or None (a miss, an unreadable or mismatching entry, the cache off)."""
    directory = cache_dir()
    if key is None or directory is None:
        return None
    path = _entry_path(directory, key)
    try:
        doc = json.loads(path.read_text())
        if doc.get("kind") != KIND or doc.get("schema_version") != SCHEMA_VERSION or doc.get("key") != key:
            return None
        return analysis_from_json(doc["analysis"])
    except Exception:  # noqa: BLE001 -- an entry that cannot be read back is a miss, whatever is wrong with it
        return None


def store(key: dict | None, a: Analysis) -> None:
    """Write the entry (best effort: a cache that cannot be written is skipped)."""
    directory = cache_dir()
    if key is None or directory is None:
        return
    doc = {"kind": KIND, "schema_version": SCHEMA_VERSION, "key": key, "analysis": analysis_to_json(a)}
    try:
        _entry_path(directory, key).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(_entry_path(directory, key), doc)
    except Exception:  # noqa: BLE001 -- the cache is an optimisation; OutputError and OSError alike skip it
        return


def cached_analysis(
    model: str, input_size: int | None, checkpoint: str | Path | None, build: Callable[[], Analysis]
) -> Analysis:
    """The analysis of ``model`` at ``input_size`` (None: the model's default) from the cache, else ``build()``
    (stored for next time)."""
    key = cache_key(model, input_size, checkpoint)
    found = load(key)
    if found is not None:
        return found
    a = build()
    store(key, a)
    return a
