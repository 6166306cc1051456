"""Bring your own nnU-Net: a real nnU-Net v2 model, imported, approved and run.

The model is made by nnunetv2 itself (test extra): a synthetic CT dataset in
nnU-Net's raw format, nnU-Net's fingerprinting, planning and preprocessing,
and two folds trained by ``nnUNetTrainer_1epoch`` on the CPU (fewer
iterations than its default so the module stays within minutes;
``make_nnunet_model.py``), in the background from the start of the session
(``tests/nnunet_model_builds.py``). The same cases then go through contourd's DICOM
pipeline and through ``nnUNetPredictor`` and the label maps are compared.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nnunet_cases import LABELS, hu_to_mr, make_case  # noqa: E402
from nnunet_model_builds import SESSION_BUILDS  # noqa: E402

from contourd.errors import ModelIntegrityError, ModelPackageError  # noqa: E402
from inference.phantom import write_ct_series  # noqa: E402
from inference.pipeline import segment_series  # noqa: E402
from model_store.nnunet_import import NnunetImportOptions, convert  # noqa: E402
from model_store.registry import ModelRegistry  # noqa: E402

# The first test to ask for a model waits for its training (nnunet_model_builds.TIMEOUT_S).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
nnunetv2 = pytest.importorskip("nnunetv2", reason="pip install -c constraints.txt -e '.[test]'")

#: Test cases: spacing (z, y, x) mm different from training (2, 1, 1) so both
#: resampling paths run (3.5 mm slices: anisotropic, z resampled on its own).
CASES = {"c1": (101, (2.5, 0.9, 0.9)), "c2": (102, (3.5, 1.0, 1.0))}


def _contourd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nnunet")


@pytest.fixture(scope="module")
def trained(work: Path) -> Path:
    """The trained-model folder ``nnUNetTrainer_1epoch__nnUNetPlans__3d_fullres`` (CT, folds
    0 and 1; ``CONTOURD_NNUNET_TEST_MODEL`` may name one made earlier)."""
    folder = SESSION_BUILDS.result("ct", work)
    assert (folder / "fold_1" / "checkpoint_final.pth").is_file()
    return folder


@pytest.fixture(scope="module")
def mr_trained(work: Path) -> Path:
    """An MR model (channel "MR", so nnU-Net plans ``ZScoreNormalization``), fold 0
    (``CONTOURD_NNUNET_TEST_MR_MODEL`` may name one made earlier)."""
    folder = SESSION_BUILDS.result("mr", work / "mr")
    plans = json.loads((folder / "plans.json").read_text())
    schemes = plans["configurations"]["3d_fullres"]["normalization_schemes"]
    assert schemes == ["ZScoreNormalization"], schemes
    return folder


@pytest.fixture(scope="module")
def config(work: Path, trained: Path) -> Path:
    """A node config whose registry holds the model imported and approved by the CLI."""
    path = work / "contourd.yaml"
    path.write_text(f"node:\n  data_dir: {work / 'var'}\n", encoding="utf-8")
    proc = _contourd(
        "models", "-c", str(path), "import", str(trained), "--by", "physicist",
        "--name", "shapes", "--body-site", "abdomen", "--mode", "fast",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "imported shapes 1.0.0 (nnunet, 2 ROIs)" in proc.stdout
    assert "'Sphere' is not a TG-263 name" in proc.stderr
    proc = _contourd("models", "-c", str(path), "approve", "shapes", "1.0.0", "--by", "physicist")
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture(scope="module")
def cases(work: Path) -> dict[str, tuple[Path, np.ndarray, tuple[float, float, float]]]:
    """case -> (DICOM series folder, image [z, y, x] HU, spacing (z, y, x) mm)."""
    out = {}
    for name, (seed, spacing) in CASES.items():
        image, _ = make_case(seed, spacing)
        affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
        affine[:3, 3] = (-30.0, -40.0, 100.0)
        write_ct_series(work / "dicom" / name, image.astype(np.float32), affine)
        out[name] = (work / "dicom" / name, image, spacing)
    return out


def _write_mr_series(out_dir: Path, image_mr: np.ndarray, spacing: tuple[float, ...]) -> Path:
    """An MR Image Storage series of ``image_mr`` ``[z, y, x]`` (the phantom CT writer's
    geometry, then SOP class and modality made MR)."""
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    affine[:3, 3] = (-30.0, -40.0, 100.0)
    write_ct_series(out_dir, image_mr.astype(np.float32), affine,
                    series_description="contourd phantom MR")  # fmt: skip
    for path in sorted(out_dir.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = pydicom.uid.MRImageStorage
        ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.MRImageStorage
        ds.Modality = "MR"
        del ds.RescaleType  # MR has no Hounsfield units
        ds.save_as(path, enforce_file_format=True)
    return out_dir


def _nnunet_predictor(folder: Path, folds: tuple[int, ...], mirror: bool) -> Any:
    """``nnUNetPredictor`` loaded as ``initialize_from_trained_model_folder`` does it.

    Its trainer search by name imports every nnU-Net trainer module, and the
    Primus trainers import timm -> torchvision, whose PyPI wheel does not load
    against the CPU build of torch pinned here; so the trainer class is
    imported directly and handed over with ``manual_initialization``.
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs import (
        nnUNetTrainer_1epoch,
    )
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = json.loads((folder / "dataset.json").read_text())
    plans = PlansManager(json.loads((folder / "plans.json").read_text()))
    checkpoints = [
        torch.load(folder / f"fold_{f}" / "checkpoint_final.pth", map_location="cpu",
                   weights_only=False)
        for f in folds
    ]  # fmt: skip
    assert checkpoints[0]["trainer_name"] == "nnUNetTrainer_1epoch"
    configuration = plans.get_configuration(checkpoints[0]["init_args"]["configuration"])
    network = nnUNetTrainer_1epoch.build_network_architecture(
        plans,
        configuration,
        1,
        plans.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    network.load_state_dict(checkpoints[0]["network_weights"])
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=mirror,
        device=torch.device("cpu"),
        verbose=False,
        allow_tqdm=False,
    )
    predictor.manual_initialization(
        network,
        plans,
        configuration,
        [c["network_weights"] for c in checkpoints],
        dataset_json,
        checkpoints[0]["trainer_name"],
        checkpoints[0]["inference_allowed_mirroring_axes"],
    )
    return predictor


def _nnunet_predict(predictor: Any, image: np.ndarray, spacing: Any) -> np.ndarray:
    seg = predictor.predict_single_npy_array(
        image.astype(np.float32)[None], {"spacing": list(spacing)}
    )
    return np.asarray(seg)


def _approved(config: Path, name: str = "shapes") -> Any:
    data_dir = Path(config.read_text().split("data_dir:")[1].strip())
    with ModelRegistry(data_dir) as registry:
        return registry.resolve_approved(name, "1.0.0")


def _compare(
    model: Any, cases: dict[str, Any], reference: dict[str, np.ndarray], **kwargs: Any
) -> dict[str, float]:
    worst: dict[str, float] = {}
    for name, (series, _image, _spacing) in cases.items():
        result = segment_series(series, model, device="cpu", **kwargs)
        masks = {r.name: r.mask for r in result.rois}
        # The weights are trained, not random: nnU-Net finds the sphere. (The short
        # training may leave the box unlearnt; then both must leave it empty.)
        assert (reference[name] == LABELS["Sphere"]).sum() > 100, f"no Sphere in {name}"
        for roi, label in LABELS.items():
            ours = masks.get(roi, np.zeros(reference[name].shape, dtype=bool))
            worst[roi] = min(worst.get(roi, 1.0), _dice(ours, reference[name] == label))
    return worst


@pytest.mark.parametrize(
    ("folds", "mirror"), [((0,), False), ((0, 1), True)], ids=["fold0", "folds01-mirror"]
)
def test_exact_and_fast_agree_with_nnunet_predictor(
    trained: Path, config: Path, cases: dict[str, Any], folds: tuple[int, ...], mirror: bool
) -> None:
    model = _approved(config)
    if folds != (0, 1):  # the package holds folds 0 and 1; run fold 0 alone from a copy
        nnunet = model.card.nnunet.model_copy(update={"folds": list(folds)})
        model = _with_card(model, model.card.model_copy(update={"nnunet": nnunet}))
    if mirror:  # 8 passes per window and fold: the anisotropic case only, to stay in minutes
        cases = {"c2": cases["c2"]}
    predictor = _nnunet_predictor(trained, folds, mirror)
    reference = {
        name: _nnunet_predict(predictor, image, spacing)
        for name, (_series, image, spacing) in cases.items()
    }
    exact = _compare(model, cases, reference, nnunet_mode="exact", nnunet_mirror=mirror)
    fast = _compare(model, cases, reference, nnunet_mode="fast", nnunet_mirror=mirror)
    print(f"folds {folds} mirror {mirror}: exact Dice {exact}, fast Dice {fast}")
    assert all(d >= 0.995 for d in exact.values()), exact
    # Issue 16's figure for fast mode. (Before fast resampled the thick-slice axis of
    # the logits nearest-neighbour as nnU-Net does, the 3.5 mm case gave 0.983 and,
    # on an unseeded model, 0.9765; since then 1.0 on this model, 2026-12-03.)
    assert all(d >= 0.98 for d in fast.values()), fast


def _with_card(model: Any, card: Any) -> Any:
    import dataclasses

    return dataclasses.replace(model, card=card)


def test_segment_cli_writes_an_rtstruct_with_the_nnunet_rois(
    config: Path, cases: dict[str, Any], work: Path
) -> None:
    series = cases["c1"][0]
    out = work / "rs-out"
    proc = _contourd("segment", "--no-progress", "-c", str(config), "-m", "shapes", str(series),
                     "-o", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (rs_path,) = out.rglob("RS.*.dcm")
    rs = pydicom.dcmread(rs_path)
    names = {r.ROIName for r in rs.StructureSetROISequence}
    # Sphere is always found; Box only if the short training learnt it (empty ROIs
    # are reported as warnings and not written).
    assert "Sphere" in names and names <= {"Box", "Sphere"}, names
    assert "Box" in names or "'Box' from model shapes 1.0.0 is empty" in proc.stderr


def test_import_is_deterministic_and_the_card_reads_the_plans(trained: Path, work: Path) -> None:
    options = NnunetImportOptions(name="shapes", body_site="ABDOMEN", folds=("1",))
    first, second = work / "det" / "a", work / "det" / "b"
    convert(trained, first, options, work / "det" / "xa")
    convert(trained, second, options, work / "det" / "xb")
    for name in ("model.yaml", "weights.safetensors"):
        assert _sha256(first / name) == _sha256(second / name)
    plans = json.loads((trained / "plans.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    from model_store.card import parse_card

    card = parse_card((first / "model.yaml").read_text())
    assert card.model_type == "nnunet" and card.modality == "CT"
    assert [(r.label, r.name) for r in card.rois] == [(1, "Sphere"), (2, "Box")]
    assert card.nnunet is not None
    assert card.nnunet.folds == [1]
    assert list(card.nnunet.spacing_mm) == conf["spacing"]
    assert list(card.nnunet.patch_size) == conf["patch_size"]
    assert card.nnunet.normalization.scheme == "CTNormalization"
    props = plans["foreground_intensity_properties_per_channel"]["0"]
    assert card.nnunet.normalization.percentile_99_5 == props["percentile_99_5"]
    assert card.nnunet.network_class == conf["architecture"]["network_class_name"]
    assert card.nnunet.mirror_axes == [0, 1, 2]


def test_a_checkpoint_needing_unsafe_unpickling_is_refused_by_name(
    trained: Path, work: Path
) -> None:
    import torch

    bad = work / "unsafe" / trained.name
    shutil.copytree(trained, bad, ignore=shutil.ignore_patterns("fold_1"))
    ckpt = torch.load(bad / "fold_0" / "checkpoint_final.pth", weights_only=False)
    ckpt["trainer_hook"] = shutil.rmtree  # a function: unpickling it means importing code
    torch.save(ckpt, bad / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(ModelPackageError) as err:
        convert(bad.parent, work / "unsafe-pkg", NnunetImportOptions(body_site="X"), work / "u")
    message = str(err.value)
    assert f"{trained.name}/fold_0/checkpoint_final.pth" in message
    assert "arbitrary unpickling" in message and "rmtree" in message


def test_a_region_based_model_is_refused_with_the_reason(trained: Path, work: Path) -> None:
    bad = work / "regions" / trained.name
    shutil.copytree(trained, bad, ignore=shutil.ignore_patterns("fold_*"))
    dataset = json.loads((bad / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
    dataset["regions_class_order"] = [1, 2]
    (bad / "dataset.json").write_text(json.dumps(dataset))
    shutil.copytree(trained / "fold_0", bad / "fold_0")
    with pytest.raises(ModelPackageError, match="region-based"):
        convert(bad, work / "regions-pkg", NnunetImportOptions(body_site="X"), work / "r")


def test_tampered_weights_are_refused_at_load(config: Path, cases: dict[str, Any]) -> None:
    model = _approved(config)
    weights = model.weights_path
    original = weights.read_bytes()
    os.chmod(weights, stat.S_IRUSR | stat.S_IWUSR)
    try:
        weights.write_bytes(original[:-4] + bytes(b ^ 0xFF for b in original[-4:]))
        with pytest.raises(ModelIntegrityError, match="sha256"):
            segment_series(cases["c1"][0], _approved(config), device="cpu")
    finally:
        weights.write_bytes(original)
        os.chmod(weights, stat.S_IRUSR)


@pytest.fixture(autouse=True)
def _quiet_threads() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _write_nifti_case(case_dir: Path, image: np.ndarray, labels: np.ndarray, spacing: Any) -> None:
    """An evaluation case: ``ct.nii.gz`` and one ``<ROI>.nii.gz`` per label (``[z, y, x]``)."""
    import SimpleITK as sitk

    case_dir.mkdir(parents=True)
    for array, name in [(image, "ct"), *((labels == v, roi) for roi, v in LABELS.items())]:
        img = sitk.GetImageFromArray(np.asarray(array, dtype=np.int16))
        img.SetSpacing(tuple(float(v) for v in reversed(spacing)))
        sitk.WriteImage(img, str(case_dir / f"{name}.nii.gz"))


def test_evaluate_compare_mode_prints_both_modes_and_their_agreement(
    config: Path, work: Path
) -> None:
    import re

    seed, spacing = CASES["c2"]
    image, labels = make_case(seed, spacing)
    dataset = work / "compare-dataset"
    _write_nifti_case(dataset / "c2", image, labels, spacing)
    proc = _contourd("evaluate", "--no-progress", "-c", str(config), "-m", "shapes",
                     "--compare-mode", str(dataset))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    print(out)
    assert "exact: nnU-Net exact: folds 0, 1, step 0.5, mirroring axes [0, 1, 2]" in out, out
    assert "fast: nnU-Net fast: folds 0, 1, step 0.75, no mirroring" in out, out
    # Each mode against the reference: the trained model finds the sphere in both.
    row = re.search(r"^Sphere\s+([0-9.]+)\s+([0-9.]+)\s+([-+][0-9.]+)$", out, re.MULTILINE)
    assert row is not None, out
    exact_dice, fast_dice, difference = (float(v) for v in row.groups())
    assert exact_dice > 0.3 and fast_dice > 0.3, out
    assert abs(difference - (fast_dice - exact_dice)) < 2e-4
    # fast against exact, mask by mask (the figure the issue asks --compare-mode to print)
    agreement = re.search(r"^Sphere\s+([0-9.]+)\s+([0-9.]+)\s+1$", out, re.MULTILINE)
    lowest = re.search(r"lowest fast-vs-exact Dice over ROIs and cases: ([0-9.]+)", out)
    assert agreement is not None and lowest is not None, out
    assert float(lowest.group(1)) <= float(agreement.group(2))
    # exact mirrors (nnU-Net's default) and fast does not (ours): on this soft
    # 30-iteration model that alone moves the sphere's edge (0.96 seen, 2026-12-03;
    # with mirroring on in both, the agreement test above sees 1.0).
    assert float(lowest.group(1)) >= 0.93, out


def test_a_node_routes_ct_and_mr_series_to_their_nnunet_models(
    trained: Path, mr_trained: Path, cases: dict[str, Any], tmp_path: Path
) -> None:
    """CT and MR series pushed with storescu: the rules' modality picks the model, the CT
    rule's ``nnunet_mode: exact`` overrides the card's fast mode, and the MR model
    (ZScore normalisation) draws what ``nnUNetPredictor`` draws."""
    import yaml
    from node_harness import node_config_file, node_with_tps, storescu_push
    from peer_tools import wait_for

    mr_spacing = (3.0, 1.0, 1.0)
    mr_image = hu_to_mr(make_case(103, mr_spacing)[0])
    mr_series = _write_mr_series(tmp_path / "mr-series", mr_image, mr_spacing)
    config_path = tmp_path / "contourd.yaml"

    def write_config(tps_port: int) -> Path:
        ct_rule = {"name": "ct-shapes", "model": "shapes", "nnunet_mode": "exact"}
        path = node_config_file(tmp_path, tps_port, rule=ct_rule)
        data = yaml.safe_load(path.read_text())
        mr_rule = {"name": "mr-shapes", "match": {"modality": "MR"}, "model": "shapes-mr"}
        data["rules"].append({**mr_rule, "send_to": ["tps"], "outputs": ["rtstruct"]})
        path.write_text(yaml.safe_dump(data))
        return path

    def prepare(_data_dir: Path) -> None:
        for folder, name in ((trained, "shapes"), (mr_trained, "shapes-mr")):
            proc = _contourd("models", "-c", str(config_path), "import", str(folder),
                             "--by", "physicist", "--name", name, "--body-site", "abdomen",
                             "--mode", "fast")  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            proc = _contourd("models", "-c", str(config_path), "approve", name, "1.0.0",
                             "--by", "physicist")  # fmt: skip
            assert proc.returncode == 0, proc.stderr

    with node_with_tps(tmp_path, approve=False, write_config=write_config, prepare=prepare) as run:
        storescu_push(run.node.port, sorted(cases["c2"][0].glob("*.dcm")))
        storescu_push(run.node.port, sorted(mr_series.glob("*.dcm")), calling_ae="MRSIM")

        def two_rtstructs() -> list[pydicom.Dataset] | None:
            found = [ds for ds in run.tps.received() if ds.Modality == "RTSTRUCT"]
            return found if len(found) == 2 else None

        rtstructs = wait_for(two_rtstructs, 600, "two RTSTRUCTs at the TPS")
        data_dir = run.data_dir
    assert isinstance(rtstructs, list)
    ct_uid = str(pydicom.dcmread(next(cases["c2"][0].glob("*.dcm"))).SeriesInstanceUID)
    mr_uid = str(pydicom.dcmread(next(mr_series.glob("*.dcm"))).SeriesInstanceUID)
    by_series = {}
    for rs in rtstructs:
        ref = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
        by_series[str(ref.RTReferencedSeriesSequence[0].SeriesInstanceUID)] = rs
    assert set(by_series) == {ct_uid, mr_uid}
    for uid, name, mode in ((ct_uid, "shapes", "exact"), (mr_uid, "shapes-mr", "fast")):
        rs = by_series[uid]
        assert "Sphere" in {r.ROIName for r in rs.StructureSetROISequence}, name
        for roi in rs.StructureSetROISequence:
            algorithm = roi.ROIDerivationAlgorithmIdentificationSequence[0]
            assert algorithm.AlgorithmName == name
            assert f"nnunet_mode={mode}" in algorithm.AlgorithmParameters.split(";")
    # The MR model's exact mode against nnU-Net's own predictor on the same series.
    with ModelRegistry(data_dir) as registry:
        mr_model = registry.resolve_approved("shapes-mr", "1.0.0")
    assert mr_model.card.modality == "MR"
    assert mr_model.card.nnunet.normalization.scheme == "ZScoreNormalization"
    reference = _nnunet_predict(_nnunet_predictor(mr_trained, (0,), False), mr_image, mr_spacing)
    assert (reference == LABELS["Sphere"]).sum() > 100, "nnU-Net found no sphere in the MR case"
    result = segment_series(mr_series, mr_model, device="cpu", nnunet_mode="exact",
                            nnunet_mirror=False)  # fmt: skip
    masks = {r.name: r.mask for r in result.rois}
    for roi, label in LABELS.items():
        ours = masks.get(roi, np.zeros(reference.shape, dtype=bool))
        assert _dice(ours, reference == label) >= 0.995, roi
