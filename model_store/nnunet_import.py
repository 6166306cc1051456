"""Turn an nnU-Net v2 trained model into a contourd model package.

Accepted sources: a trained-model folder ``<Trainer>__<Plans>__<configuration>/``
(``dataset.json``, ``plans.json``, ``fold_<k>/checkpoint_final.pth``), a folder
above one (e.g. ``DatasetNNN_Name/``), or the zip ``nnUNetv2_export_model_to_zip``
writes. From a zip only ``dataset.json``, ``plans.json`` and the chosen
checkpoints are read; validation images in it are never extracted.

Each fold's ``network_weights`` is read with ``torch.load(weights_only=True)``,
torch's restricted unpickler that builds tensors, numbers, strings and
containers only. A checkpoint that needs anything else (arbitrary classes,
functions: code that would run on load) is refused with its file name and
the object torch refused. The weights are written to one
``weights.safetensors`` (tensors prefixed ``fold_<k>.``) and the card to
``model.yaml`` (:mod:`model_store.nnunet_card`); the same source and options
always give byte-identical files, so importing twice gives the same hashes.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from contourd.errors import ModelPackageError
from model_store.card import NAME_PATTERN, SEMVER_PATTERN, validate_roi_name
from model_store.package import CARD_FILE, WEIGHTS_FILE, _safe_member_path
from model_store.tg263 import is_tg263_name

CHECKPOINT = "checkpoint_final.pth"
PLANS_COPY = "nnunet_plans.json"
DATASET_COPY = "nnunet_dataset.json"
_FOLD_RE = re.compile(r"^fold_(\d+|all)$")
#: channel_names values (upper case) that mean MR; "CT" means CT.
MR_CHANNELS = ("MR", "MRI", "T1", "T2", "FLAIR", "ADC", "DWI", "PD", "T1C", "T1CE", "T2W", "T1W")
#: ROI colours (r, g, b) by label, cycling.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 200, 0), (255, 0, 255), (0, 220, 220),
    (255, 128, 0), (128, 0, 255), (0, 128, 255), (128, 255, 0), (255, 0, 128), (160, 82, 45),
)  # fmt: skip


@dataclass(frozen=True)
class NnunetImportOptions:
    """Choices a person makes when importing an nnU-Net model.

    ``None`` fields are filled from the model (name from the dataset name,
    modality from ``dataset.json``'s channel name, all folds found).
    """

    name: str | None = None
    version: str = "1.0.0"
    modality: str | None = None
    body_site: str | None = None
    folds: tuple[str, ...] | None = None
    configuration: str | None = None
    orientation: str = "LPS"
    mode: str = "exact"
    checkpoint: str = CHECKPOINT


@dataclass
class NnunetSource:
    """The files of one trained nnU-Net configuration, read into memory or from disk."""

    folder_name: str
    dataset_json: dict[str, Any]
    plans: dict[str, Any]
    checkpoints: dict[str, Path] = field(default_factory=dict)  # fold -> file
    where: str = ""


def _is_model_dir(path: Path) -> bool:
    return (path / "plans.json").is_file() and (path / "dataset.json").is_file()


def looks_like_nnunet(path: Path) -> bool:
    """True for an nnU-Net trained-model folder (or a folder above one) or export zip."""
    path = Path(path)
    if path.is_dir():
        if (path / CARD_FILE).exists():
            return False
        return _is_model_dir(path) or any(p.name == "plans.json" for p in path.rglob("plans.json"))
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        return any(PurePosixPath(n).name == "plans.json" for n in names) and not any(
            PurePosixPath(n).name == CARD_FILE for n in names
        )
    return False


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelPackageError(f"{path} is not readable JSON: {err}") from err
    if not isinstance(data, dict):
        raise ModelPackageError(f"{path} must hold a JSON object")
    return data


def _pick(candidates: list[Path], configuration: str | None, where: Path) -> Path:
    if configuration is not None:
        candidates = [c for c in candidates if c.name.split("__")[-1] == configuration]
    if len(candidates) == 1:
        return candidates[0]
    names = sorted(c.name for c in candidates)
    if not names:
        raise ModelPackageError(
            f"{where} holds no nnU-Net trained model"
            + (f" of configuration {configuration!r}" if configuration else "")
            + " (a folder <Trainer>__<Plans>__<configuration>/ with plans.json, dataset.json "
            "and fold_*/checkpoint_final.pth)"
        )
    raise ModelPackageError(
        f"{where} holds several nnU-Net trained models ({', '.join(names)}); choose one with "
        "--configuration (e.g. 3d_fullres)"
    )


def extract_nnunet_zip(zip_path: Path, dest: Path, checkpoint: str = CHECKPOINT) -> Path:
    """Extract only plans/dataset JSON and checkpoints of an nnU-Net export zip.

    Raises
    ------
    ModelPackageError
        On an unreadable zip or a member path outside ``dest``.
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ModelPackageError(f"{zip_path} is not a readable zip file: {err}") from err
    with archive:
        for member in archive.infolist():
            rel = _safe_member_path(member.filename)
            if rel is None or member.is_dir():
                continue
            wanted = rel.name in ("plans.json", "dataset.json") or (
                rel.name == checkpoint and len(rel.parts) >= 2 and _FOLD_RE.match(rel.parts[-2])
            )
            if not wanted:
                continue
            target = dest.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(member))
    return dest


def find_source(path: Path, options: NnunetImportOptions) -> NnunetSource:
    """The trained model under ``path`` (a folder; extract zips first).

    Raises
    ------
    ModelPackageError
        When there is none, several without ``--configuration``, or no checkpoint.
    """
    path = Path(path)
    candidates = (
        [path]
        if _is_model_dir(path)
        else sorted(p.parent for p in path.rglob("plans.json") if _is_model_dir(p.parent))
    )
    folder = _pick(candidates, options.configuration, path)
    found: dict[str, Path] = {}
    for sub in sorted(folder.iterdir()):
        match = _FOLD_RE.match(sub.name)
        if match and (sub / options.checkpoint).is_file():
            found[match.group(1)] = sub / options.checkpoint
    if options.folds is not None:
        missing = [f for f in options.folds if f not in found]
        if missing:
            raise ModelPackageError(
                f"{folder.name} has no fold_{missing[0]}/{options.checkpoint}; folds with "
                f"checkpoints: {', '.join(sorted(found)) or 'none'}"
            )
        found = {f: found[f] for f in options.folds}
    if not found:
        raise ModelPackageError(
            f"{folder} has no fold_*/{options.checkpoint}; train the model to the end or pass "
            "--checkpoint checkpoint_best.pth"
        )
    return NnunetSource(
        folder_name=folder.name,
        dataset_json=_read_json(folder / "dataset.json"),
        plans=_read_json(folder / "plans.json"),
        checkpoints=dict(sorted(found.items(), key=lambda kv: _fold_key(kv[0]))),
        where=str(folder),
    )


def _fold_key(fold: str) -> tuple[int, int]:
    return (1, 0) if fold == "all" else (0, int(fold))


def numpy_value_globals() -> list[Any]:
    """numpy's scalar and dtype constructors, allowed to the restricted unpickler.

    nnU-Net's checkpoints log numbers as numpy scalars (``np.float64``); these
    constructors build plain values from bytes and run no other code.
    """
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    kinds = ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")
    return [scalar, np.dtype, *(type(np.dtype(k)) for k in kinds)]


def load_checkpoint(path: Path, rel: str) -> dict[str, Any]:
    """A checkpoint read with torch's restricted (weights-only) unpickler.

    Raises
    ------
    ModelPackageError
        Naming ``rel`` when the file needs unrestricted unpickling or is unreadable.
    """
    import torch

    try:
        with torch.serialization.safe_globals(numpy_value_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()
        detail = next((line for line in reason if "GLOBAL" in line or "global" in line), "")
        raise ModelPackageError(
            f"{rel} needs arbitrary unpickling to load ({detail.strip() or reason[0]}); "
            "loading it could run code, so contourd refuses it. Save only the weights: "
            "torch.save({'network_weights': net.state_dict()}, ...) or a plain nnU-Net checkpoint"
        ) from err
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise ModelPackageError(f"{rel} is not a readable torch checkpoint: {err}") from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("network_weights"), dict):
        raise ModelPackageError(
            f"{rel} has no 'network_weights' state dict; not an nnU-Net checkpoint"
        )
    return checkpoint


def _configuration(plans: dict[str, Any], name: str) -> dict[str, Any]:
    configs = plans.get("configurations", {})
    if name not in configs:
        raise ModelPackageError(
            f"plans.json has no configuration {name!r} (it has {', '.join(configs) or 'none'})"
        )
    conf = dict(configs[name])
    parent = conf.pop("inherits_from", None)
    if parent is not None:
        conf = {**_configuration(plans, parent), **conf}
    return conf


def _labels(dataset_json: dict[str, Any]) -> list[tuple[int, str]]:
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ModelPackageError("dataset.json has no 'labels' mapping")
    regions = [k for k, v in labels.items() if isinstance(v, (list, tuple))]
    if regions or "regions_class_order" in dataset_json:
        raise ModelPackageError(
            f"this nnU-Net model is region-based (labels {regions or 'with regions_class_order'}); "
            "contourd runs label-based nnU-Net models only (one output channel per label, "
            "softmax); retrain without regions or contour those structures another way"
        )
    out = []
    for name, value in labels.items():
        if name == "ignore" or name == "background" or int(value) == 0:
            continue
        out.append((int(value), str(name)))
    out.sort()
    values = [v for v, _ in out]
    if values != list(range(1, len(values) + 1)):
        raise ModelPackageError(
            f"dataset.json label values {values} are not consecutive from 1; nnU-Net needs "
            "consecutive labels, so this dataset.json does not belong to a trained model"
        )
    return out


def _roi(label: int, name: str) -> dict[str, Any]:
    try:
        roi_name = validate_roi_name(name)
    except ValueError as err:
        raise ModelPackageError(f"dataset.json label {label}: {err}") from err
    roi: dict[str, Any] = {
        "label": label,
        "name": roi_name,
        "color": list(PALETTE[(label - 1) % len(PALETTE)]),
        "interpreted_type": "ORGAN",
    }
    if is_tg263_name(roi_name):
        roi["tg263_name"] = roi_name
    if re.search(r"(_L|_R)$", roi_name):
        roi["laterality"] = roi_name[-1]
    return roi


def _modality(dataset_json: dict[str, Any], given: str | None) -> str:
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    if len(channels) != 1:
        raise ModelPackageError(
            f"this nnU-Net model takes {len(channels)} input channels ({channels}); contourd "
            "runs single-channel models (one CT or MR series)"
        )
    if given is not None:
        if given.upper() not in ("CT", "MR"):
            raise ModelPackageError(f"--modality {given!r} must be CT or MR")
        return given.upper()
    channel = str(next(iter(channels.values()))).upper()
    if channel == "CT":
        return "CT"
    if channel in MR_CHANNELS or channel.startswith("MR"):
        return "MR"
    raise ModelPackageError(
        f"dataset.json names the input channel {channel!r}; say what it is with --modality CT "
        "or --modality MR"
    )


def _default_name(dataset_name: str) -> str:
    stem = dataset_name.split("_", 1)[1] if dataset_name.startswith("Dataset") else dataset_name
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._") or "nnunet-model"
    return name[:64]


def build_card(
    source: NnunetSource, options: NnunetImportOptions, mirror_axes: list[int], trainer: str
) -> dict[str, Any]:
    """The card (as a plain mapping) for ``source``; validated by the caller."""
    parts = source.folder_name.split("__")
    if len(parts) != 3:
        raise ModelPackageError(
            f"folder {source.folder_name!r} is not named <Trainer>__<Plans>__<configuration>"
        )
    _, plans_name, configuration = parts
    conf = _configuration(source.plans, configuration)
    spacing, patch = conf.get("spacing", []), conf.get("patch_size", [])
    if len(spacing) != 3 or len(patch) != 3:
        raise ModelPackageError(
            f"configuration {configuration!r} is {len(patch)}D; contourd runs 3D nnU-Net "
            "configurations (3d_fullres, 3d_lowres without cascade)"
        )
    if conf.get("previous_stage") or "cascade" in configuration:
        raise ModelPackageError(
            f"configuration {configuration!r} is a cascade stage, which needs the low-resolution "
            "model's output; import the 3d_fullres or 3d_lowres configuration instead"
        )
    schemes = conf.get("normalization_schemes", [])
    scheme = schemes[0] if schemes else None
    if scheme not in ("CTNormalization", "ZScoreNormalization"):
        raise ModelPackageError(
            f"normalisation {scheme!r} is not supported; contourd runs CTNormalization and "
            "ZScoreNormalization models"
        )
    props = source.plans.get("foreground_intensity_properties_per_channel", {}).get("0", {})
    normalization: dict[str, Any] = {
        "scheme": scheme,
        "use_mask_for_norm": bool((conf.get("use_mask_for_norm") or [False])[0]),
    }
    if scheme == "CTNormalization":
        for key in ("mean", "std", "percentile_00_5", "percentile_99_5"):
            if key not in props:
                raise ModelPackageError(
                    f"plans.json lacks foreground intensity property {key!r} needed by "
                    "CTNormalization"
                )
            normalization[key] = float(props[key])
    for fn_key in ("resampling_fn_data", "resampling_fn_probabilities"):
        if conf.get(fn_key, "resample_data_or_seg_to_shape") != "resample_data_or_seg_to_shape":
            raise ModelPackageError(
                f"plans use {fn_key} = {conf[fn_key]!r}; contourd reproduces nnU-Net's default "
                "resample_data_or_seg_to_shape only"
            )
    arch = conf.get("architecture")
    if not isinstance(arch, dict) or "network_class_name" not in arch:
        raise ModelPackageError(
            "plans.json has no architecture.network_class_name (plans from nnU-Net before "
            "v2.4?); re-plan with a current nnU-Net"
        )
    dataset_name = str(source.plans.get("dataset_name", "nnU-Net dataset"))
    card: dict[str, Any] = {
        "name": options.name or _default_name(dataset_name),
        "version": options.version,
        "description": (
            f"nnU-Net v2 model {dataset_name} ({trainer}, {plans_name}, {configuration}, "
            f"folds {', '.join(options_folds(source))}), imported with contourd"
        ),
        "intended_use": (
            "Automatic contours for clinician review, as commissioned by the clinic that "
            "imported this model"
        ),
        "limitations": "Imported nnU-Net model: evaluate on local cases before approval.",
        "originator": str(source.dataset_json.get("reference") or "nnU-Net v2 model (imported)"),
        "license": str(
            source.dataset_json.get("licence") or source.dataset_json.get("license") or ""
        ),
        "modality": _modality(source.dataset_json, options.modality),
        "body_site": options.body_site,
        "model_type": "nnunet",
        "rois": [_roi(v, n) for v, n in _labels(source.dataset_json)],
        "nnunet": {
            "source": source.folder_name,
            "dataset_name": dataset_name,
            "trainer": trainer,
            "plans_name": plans_name,
            "configuration": configuration,
            "folds": [f if f == "all" else int(f) for f in options_folds(source)],
            "orientation": options.orientation,
            "transpose_forward": list(source.plans.get("transpose_forward", [0, 1, 2])),
            "transpose_backward": list(source.plans.get("transpose_backward", [0, 1, 2])),
            "spacing_mm": [float(s) for s in spacing],
            "patch_size": [int(p) for p in patch],
            "normalization": normalization,
            "resampling_data": _resampling(conf.get("resampling_fn_data_kwargs"), 3),
            "resampling_probabilities": _resampling(
                conf.get("resampling_fn_probabilities_kwargs"), 1
            ),
            "network_class": str(arch["network_class_name"]),
            "network_kwargs": arch.get("arch_kwargs", {}),
            "network_kwargs_requires_import": list(arch.get("_kw_requires_import", [])),
            "mirror_axes": mirror_axes,
            "mode": options.mode,
        },
        "training": {
            "cases": int(source.dataset_json.get("numTraining", 0)),
            "dataset": dataset_name,
            "notes": f"trained with nnU-Net v2 ({trainer}); counts from dataset.json",
        },
    }
    if card["body_site"] is None:
        raise ModelPackageError(
            "say which body site this model contours with --body-site (e.g. HEADNECK, PELVIS); "
            "routing rules match on it"
        )
    return card


def options_folds(source: NnunetSource) -> list[str]:
    """The folds being imported, in order."""
    return list(source.checkpoints)


def _resampling(kwargs: dict[str, Any] | None, default_order: int) -> dict[str, Any]:
    kwargs = kwargs or {}
    return {
        "order": int(kwargs.get("order", default_order)),
        "order_z": int(kwargs.get("order_z", 0)),
        "force_separate_z": kwargs.get("force_separate_z"),
    }


def convert(path: Path, dest: Path, options: NnunetImportOptions, workdir: Path) -> list[str]:
    """Write a contourd package for the nnU-Net model at ``path`` into folder ``dest``.

    Parameters
    ----------
    path
        nnU-Net trained-model folder, a folder above it, or an export zip.
    dest
        New package folder (created).
    options
        The importer's choices.
    workdir
        Scratch folder for zip extraction.

    Returns
    -------
    list of str
        Notes for the person importing (e.g. the folds taken).

    Raises
    ------
    ModelPackageError
        With the file and the reason when the model cannot be imported.
    """
    import torch
    from safetensors.torch import save_file

    from model_store.card import ModelCard

    path = Path(path)
    if path.is_file():
        path = extract_nnunet_zip(path, workdir, options.checkpoint)
    source = find_source(path, options)
    notes = [f"nnU-Net model {source.folder_name}: folds {', '.join(source.checkpoints)}"]
    tensors: dict[str, torch.Tensor] = {}
    mirror_axes: list[int] | None = None
    trainer = source.folder_name.split("__")[0]
    for fold, ckpt_path in source.checkpoints.items():
        rel = f"{source.folder_name}/fold_{fold}/{ckpt_path.name}"
        checkpoint = load_checkpoint(ckpt_path, rel)
        if mirror_axes is None:
            axes = checkpoint.get("inference_allowed_mirroring_axes") or ()
            mirror_axes = sorted(int(a) for a in axes)
            trainer = str(checkpoint.get("trainer_name") or trainer)
        for key, value in checkpoint["network_weights"].items():
            if not isinstance(value, torch.Tensor):
                raise ModelPackageError(f"{rel}: network_weights[{key!r}] is not a tensor")
            tensors[f"fold_{fold}.{key}"] = value.detach().to("cpu").contiguous().clone()
    card = build_card(source, options, mirror_axes or [], trainer)
    try:
        ModelCard.model_validate(card)
    except ValueError as err:
        raise ModelPackageError(f"the card made from {source.where} is invalid: {err}") from err
    if not re.match(NAME_PATTERN, card["name"]) or not re.match(SEMVER_PATTERN, card["version"]):
        raise ModelPackageError(f"name {card['name']!r} / version {card['version']!r} invalid")
    dest.mkdir(parents=True)
    (dest / CARD_FILE).write_text(
        yaml.safe_dump(card, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    save_file(dict(sorted(tensors.items())), str(dest / WEIGHTS_FILE), metadata={"format": "pt"})
    (dest / PLANS_COPY).write_text(json.dumps(source.plans, indent=2, sort_keys=True), "utf-8")
    (dest / DATASET_COPY).write_text(
        json.dumps(source.dataset_json, indent=2, sort_keys=True), "utf-8"
    )
    return notes
