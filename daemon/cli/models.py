"""``contourd models``: import, list, show, approve, retire, export packages; ROI overrides.

Every change (import, approve, retire, set-roi, export) is written to the
registry's audit table with who (``--by``), when, before and after;
``contourd models audit`` shows it.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from contourd.errors import ModelRegistryError
from daemon.config import load_config
from model_store.card import INTERPRETED_TYPES
from model_store.nnunet_import import NnunetImportOptions, convert, looks_like_nnunet
from model_store.registry import AuditEntry, ModelRecord, ModelRegistry

ROIS_COLUMN_CHARS = 56


def register(subparsers: Any) -> None:
    """Add the ``models`` subcommand and its actions."""
    parser = subparsers.add_parser(
        "models",
        help="manage model packages: import, list, show, approve, retire, export, set-roi",
        description=(
            "Manage the models of this node's data folder. Only approved versions are "
            "used by routing and `contourd segment`; every change is audited."
        ),
    )
    parser.add_argument("-c", "--config", type=Path, default=None, help="config YAML file")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    # Sub-actions accept -c too; SUPPRESS keeps a value given before the action.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", type=Path, default=argparse.SUPPRESS, help="config YAML file"
    )
    actions = parser.add_subparsers(dest="models_action", metavar="ACTION")

    p = actions.add_parser("list", parents=[common], help="all model versions in a table")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_list)

    p = actions.add_parser("show", parents=[common], help="one model version in detail")
    p.add_argument("model", metavar="NAME[@VERSION]", help="newest version when none is given")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_show)

    p = actions.add_parser(
        "import",
        parents=[common],
        help="check and import a package, or an nnU-Net v2 trained model (folder or zip)",
    )
    p.add_argument("package", type=Path, help="package folder or .zip, or nnU-Net model")
    p.add_argument("--by", default=None, help="who imports it (default: your login name)")
    nn = p.add_argument_group("nnU-Net v2 models (ignored for contourd packages)")
    nn.add_argument("--name", default=None, help="model name (default: from the dataset name)")
    nn.add_argument("--version", default="1.0.0", help="model version (default 1.0.0)")
    nn.add_argument("--modality", choices=("CT", "MR"), default=None,
                    help="default: from dataset.json's channel name")  # fmt: skip
    nn.add_argument("--body-site", default=None, help="body site routing rules match on")
    nn.add_argument("--folds", default=None,
                    help="folds to keep, e.g. 0,1,2 (default: all with a checkpoint)")  # fmt: skip
    nn.add_argument("--configuration", default=None,
                    help="e.g. 3d_fullres, when the folder or zip holds several")  # fmt: skip
    nn.add_argument("--orientation", default="LPS",
                    help="orientation code of the arrays the model was trained on (default LPS, "
                    "as SimpleITK reads axial DICOM; RAS for NIfTI reoriented to RAS)")  # fmt: skip
    nn.add_argument("--mode", choices=("exact", "fast"), default="exact",
                    help="inference mode recorded on the card (default exact)")  # fmt: skip
    nn.add_argument("--checkpoint", default="checkpoint_final.pth",
                    help="checkpoint file name in each fold folder")  # fmt: skip
    p.set_defaults(func=run_import)

    for action, helptext in (
        ("approve", "approve a version for clinical routing (records its sha256)"),
        ("retire", "take a version out of use"),
    ):
        p = actions.add_parser(action, parents=[common], help=helptext)
        p.add_argument("name")
        p.add_argument("version")
        p.add_argument("--by", required=True, help="who decides (recorded in the audit trail)")
        p.add_argument("--note", default=None, help="reason or reference, recorded")
        p.set_defaults(func=run_approve if action == "approve" else run_retire)

    p = actions.add_parser("export", parents=[common], help="write a package to share it")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("dest", type=Path, help="a .zip file or a new folder")
    p.add_argument("--by", default=None, help="who exports it (default: your login name)")
    p.set_defaults(func=run_export)

    p = actions.add_parser(
        "set-roi",
        parents=[common],
        help="override an ROI's name, colour or type (the package is never edited)",
    )
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("label", type=int, help="the ROI's label in the model card")
    p.add_argument("--name", dest="roi_name", default=None, help="new ROI name")
    p.add_argument("--color", default=None, help="new colour as R,G,B (0-255 each)")
    p.add_argument("--type", dest="roi_type", default=None, choices=INTERPRETED_TYPES)
    p.add_argument("--reset", action="store_true", help="drop the override (card values)")
    p.add_argument("--by", required=True, help="who decides (recorded in the audit trail)")
    p.add_argument("--note", default=None, help="reason, recorded")
    p.set_defaults(func=run_set_roi)

    p = actions.add_parser("audit", parents=[common], help="the audit trail, oldest first")
    p.add_argument("name", nargs="?", default=None)
    p.add_argument("version", nargs="?", default=None)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_audit)


def open_registry(args: argparse.Namespace) -> ModelRegistry:
    """The registry of the data folder the config names."""
    config = load_config(getattr(args, "config", None))
    return ModelRegistry(config.data_dir, database=config.open_database())


def parse_model_ref(ref: str) -> tuple[str, str | None]:
    """``"name@1.2.0"`` -> ``("name", "1.2.0")``; ``"name"`` -> ``("name", None)``."""
    name, _, version = ref.partition("@")
    return name, version or None


def parse_color(text: str) -> tuple[int, int, int]:
    """``"255,0,0"`` -> ``(255, 0, 0)``.

    Raises
    ------
    ModelRegistryError
        When it is not three integers.
    """
    parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3:
        raise ModelRegistryError(f"--color {text!r} must be R,G,B, e.g. 255,0,0")
    return values[0], values[1], values[2]


def _rois_cell(record: ModelRecord) -> str:
    names = [r.name for r in record.effective_rois()]
    text = ", ".join(names)
    if len(text) <= ROIS_COLUMN_CHARS:
        return text
    shown: list[str] = []
    for name in names:
        candidate = ", ".join([*shown, name])
        if len(candidate) > ROIS_COLUMN_CHARS - 12:
            break
        shown.append(name)
    return f"{', '.join(shown)} (+{len(names) - len(shown)} more)"


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]  # fmt: skip
    return "\n".join(lines)


def models_table(records: list[ModelRecord]) -> str:
    """The ``contourd models list`` table."""
    header = ["NAME", "VERSION", "STATUS", "TYPE", "MODALITY", "BODY SITE", "ROIS",
              "APPROVED BY", "APPROVED AT"]  # fmt: skip
    rows = [
        [
            r.name,
            r.version,
            r.status,
            r.card.model_type,
            r.card.modality,
            r.card.body_site,
            _rois_cell(r),
            r.approved_by or "-",
            r.approved_at or "-",
        ]
        for r in records
    ]
    return format_table(rows, header)


def run_list(args: argparse.Namespace) -> int:
    """``contourd models list``."""
    with open_registry(args) as registry:
        records = registry.list_models()
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
    elif not records:
        print("no models; import one with `contourd models import PACKAGE`")
    else:
        print(models_table(records))
    return 0


def _show_text(record: ModelRecord) -> str:
    card = record.card
    lines = [
        f"{record.name} {record.version}  [{record.status}]"
        + ("  (built-in)" if record.builtin else ""),
        f"  description:   {card.description}",
        f"  intended use:  {card.intended_use}",
        f"  limitations:   {card.limitations or '-'}",
        f"  originator:    {card.originator}"
        + (f", {card.institution}" if card.institution else ""),
        f"  modality:      {card.modality}    body site: {card.body_site}",
        f"  type:          {card.model_type}"
        + (f" ({card.algorithm}: {card.parameters.model_dump()})" if card.parameters else ""),
        f"  imported:      {record.imported_at} by {record.imported_by}",
        f"  approved:      {record.approved_at or '-'} by {record.approved_by or '-'}"
        + (f" ({record.approval_note})" if record.approval_note else ""),
    ]
    if record.retired_at:
        lines.append(f"  retired:       {record.retired_at} by {record.retired_by}")
    lines.append(f"  card sha256:    {record.card_sha256}")
    weights = record.weights_sha256 or "none (classical model, no weights file)"
    lines.append(f"  weights sha256: {weights}")
    if card.preprocessing:
        pre = card.preprocessing
        lines.append(
            f"  preprocessing: spacing_mm {list(pre.spacing_mm)} (x,y,z), {pre.orientation}, "
            f"patch {list(pre.patch_size)} (z,y,x), {pre.normalization.model_dump()}"
        )
    if card.architecture:
        lines.append(f"  architecture:  {card.architecture.model_dump()}")
    if card.nnunet:
        nn = card.nnunet
        network = nn.network_class.rsplit(".", 1)[-1]
        lines.append(
            f"  nnU-Net:       {nn.source} ({nn.dataset_name}); {network}, "
            f"spacing_mm {list(nn.spacing_mm)}, patch {list(nn.patch_size)} (array order), "
            f"{nn.normalization.scheme}, orientation {nn.orientation}"
        )
        lines.append(f"  inference:     {nn.describe()} (card mode; rules may override)")
    if card.training:
        lines.append(f"  training:      {card.training.model_dump(mode='json', exclude_none=True)}")
    lines.append("  ROIs:")
    roi_rows = []
    for roi in record.effective_rois():
        card_name = card.roi(roi.label).name  # evaluation is keyed by the card's names
        metrics = card.evaluation.per_roi.get(card_name) if card.evaluation else None
        roi_rows.append(
            [
                str(roi.label),
                roi.name + (" *" if roi.label in record.overrides else ""),
                ",".join(str(c) for c in roi.color),
                roi.interpreted_type,
                roi.tg263_name or "-",
                f"{metrics.dice:.3f}" if metrics and metrics.dice is not None else "-",
            ]
        )
    table = format_table(roi_rows, ["LABEL", "NAME", "COLOR", "TYPE", "TG-263", "DICE"])
    lines += ["    " + line for line in table.splitlines()]
    if record.overrides:
        lines.append("    * overridden by this clinic (contourd models set-roi)")
    return "\n".join(lines)


def run_show(args: argparse.Namespace) -> int:
    """``contourd models show NAME[@VERSION]``."""
    name, version = parse_model_ref(args.model)
    with open_registry(args) as registry:
        record = registry.get(name, version)
    if args.json:
        out = record.to_dict()
        out["card"] = record.card.model_dump(mode="json")
        print(json.dumps(out, indent=2))
    else:
        print(_show_text(record))
    return 0


def nnunet_options(args: argparse.Namespace) -> NnunetImportOptions:
    """The ``contourd models import`` options for an nnU-Net model."""
    folds = None
    if args.folds:
        folds = tuple(f.strip() for f in str(args.folds).split(",") if f.strip())
    return NnunetImportOptions(
        name=args.name,
        version=args.version,
        modality=args.modality,
        body_site=args.body_site,
        folds=folds,
        configuration=args.configuration,
        orientation=args.orientation,
        mode=args.mode,
        checkpoint=args.checkpoint,
    )


def run_import(args: argparse.Namespace) -> int:
    """``contourd models import PACKAGE`` (a contourd package or an nnU-Net v2 model)."""
    by = args.by or getpass.getuser()
    with open_registry(args) as registry:
        if looks_like_nnunet(args.package):
            with tempfile.TemporaryDirectory(prefix="contourd-nnunet-") as tmp:
                package = Path(tmp) / "package"
                for note in convert(args.package, package, nnunet_options(args), Path(tmp) / "x"):
                    print(note)
                record = registry.import_package(package, by=by, source=args.package)
        else:
            record = registry.import_package(args.package, by=by)
    for warning in record.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"imported {record.name} {record.version} ({record.card.model_type}, "
        f"{len(record.card.rois)} ROIs) as 'imported'; approve it with "
        f"`contourd models approve {record.name} {record.version} --by NAME`"
    )
    return 0


def run_approve(args: argparse.Namespace) -> int:
    """``contourd models approve NAME VERSION --by NAME``."""
    with open_registry(args) as registry:
        record = registry.approve(args.name, args.version, by=args.by, note=args.note)
    hashes = (
        f"weights sha256 {record.approved_weights_sha256}"
        if (record.approved_weights_sha256)
        else f"card sha256 {record.approved_card_sha256} (classical model, no weights)"
    )
    print(f"approved {record.name} {record.version} by {record.approved_by}; {hashes}")
    return 0


def run_retire(args: argparse.Namespace) -> int:
    """``contourd models retire NAME VERSION --by NAME``."""
    with open_registry(args) as registry:
        record = registry.retire(args.name, args.version, by=args.by, note=args.note)
    print(f"retired {record.name} {record.version} by {record.retired_by}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """``contourd models export NAME VERSION DEST``."""
    with open_registry(args) as registry:
        dest = registry.export(args.name, args.version, args.dest, by=args.by or getpass.getuser())
    print(f"exported {args.name} {args.version} to {dest} (package unchanged, no overrides)")
    return 0


def run_set_roi(args: argparse.Namespace) -> int:
    """``contourd models set-roi NAME VERSION LABEL [--name] [--color] [--type] --by NAME``."""
    color = parse_color(args.color) if args.color is not None else None
    with open_registry(args) as registry:
        roi, warnings = registry.set_roi(
            args.name,
            args.version,
            args.label,
            by=args.by,
            roi_name=args.roi_name,
            color=color,
            interpreted_type=args.roi_type,
            reset=args.reset,
            note=args.note,
        )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{args.name} {args.version} label {roi.label}: name {roi.name!r}, color "
        f"{list(roi.color)}, type {roi.interpreted_type}"
    )
    return 0


def _audit_line(entry: AuditEntry) -> str:
    target = f"{entry.name} {entry.version}" + (f" label {entry.label}" if entry.label else "")
    change = f"{entry.before} -> {entry.after}" if entry.before else f"{entry.after}"
    note = f"  note: {entry.note}" if entry.note else ""
    return f"{entry.at}  {entry.by}  {entry.action}  {target}: {change}{note}"


def run_audit(args: argparse.Namespace) -> int:
    """``contourd models audit [NAME [VERSION]]``."""
    with open_registry(args) as registry:
        entries = registry.audit_trail(args.name, args.version)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
    else:
        for entry in entries:
            print(_audit_line(entry))
    return 0
