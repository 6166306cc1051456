"""The model registry: tables ``models``, ``roi_overrides``, ``audit`` in the node's database.

Imported packages are copied, unchanged, to ``<data_dir>/models/<name>/<version>/``
(files made read-only). A version's ``status`` goes ``imported`` -> ``approved``
-> ``retired`` (a retired version may be approved again). Approval records the
sha256 of the card and weights at that moment; :meth:`ModelRegistry.resolve_approved`
refuses a version whose files no longer match. A clinic's ROI name, colour and
type changes live in ``roi_overrides``, never in the package. Every change
writes an ``audit`` row (who, when, what, before, after) in the same
transaction as the change.

Every folder under ``model_store/builtin/`` holding a ``model.yaml`` is
registered, unapproved, the first time a registry is opened on a data folder
that does not have that name and version yet (``body``; ``hn-oar`` once its
package is there).
"""

from __future__ import annotations

import json
import logging
import shutil
import stat
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contourd.data_folder import DataFolder
from contourd.database import DB_FILENAME, Database, DbConnection, integrity_errors
from contourd.errors import (
    ModelIntegrityError,
    ModelNotApprovedError,
    ModelNotFoundError,
    ModelPackageError,
    ModelRegistryError,
)
from model_store.approved import ApprovedModel, RoiOverride, apply_overrides
from model_store.card import (
    INTERPRETED_TYPES,
    ModelCard,
    RoiSpec,
    parse_card,
    semver_key,
    validate_color,
    validate_roi_name,
)
from model_store.package import CARD_FILE, WEIGHTS_FILE, open_package, sha256_file
from model_store.tg263 import name_warning

log = logging.getLogger(__name__)

DB_FILE = DB_FILENAME
"""The SQLite file name in the data folder (kept for older callers)."""

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
BUILTIN_BY = "contourd (built-in)"

IMPORTED = "imported"
APPROVED = "approved"
RETIRED = "retired"


def utc_now() -> str:
    """Current time, ISO 8601 UTC to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _check_by(by: str) -> str:
    who = (by or "").strip()
    if not who or len(who) > 128:
        raise ModelRegistryError(
            f"who made the change (--by) must be a non-empty name of at most 128 characters, "
            f"got {by!r}"
        )
    return who


def _columns_of(cls: type, row: dict[str, Any]) -> dict[str, Any]:
    """The values of ``row`` whose column names are fields of the dataclass ``cls``."""
    return {f.name: row[f.name] for f in fields(cls) if f.name in row}


@dataclass(frozen=True)
class AuditEntry:
    """One row of the audit trail. ``before``/``after`` are the changed state as dicts."""

    id: int
    at: str
    by: str
    action: str
    name: str
    version: str
    label: int | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    note: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class ModelRecord:
    """One model version as the registry knows it (see the ``models`` table)."""

    name: str
    version: str
    status: str
    card: ModelCard
    package_dir: Path
    card_sha256: str
    weights_sha256: str | None
    source: str
    builtin: bool
    imported_by: str
    imported_at: str
    approved_by: str | None
    approved_at: str | None
    approval_note: str | None
    approved_card_sha256: str | None
    approved_weights_sha256: str | None
    retired_by: str | None
    retired_at: str | None
    retire_note: str | None
    overrides: dict[int, RoiOverride] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def effective_rois(self) -> list[RoiSpec]:
        """The card's ROIs with the clinic's overrides applied."""
        return apply_overrides(self.card.rois, self.overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary used by ``contourd models list/show --json``."""
        rois = []
        for roi in self.effective_rois():
            item = roi.model_dump(mode="json")
            item["overridden"] = roi.label in self.overrides
            rois.append(item)
        return {
            "name": self.name,
            "version": self.version,
            "status": self.status,
            "model_type": self.card.model_type,
            "modality": self.card.modality,
            "body_site": self.card.body_site,
            "description": self.card.description,
            "rois": rois,
            "approved_by": self.approved_by,
            "approved_at": self.approved_at,
            "approval_note": self.approval_note,
            "retired_by": self.retired_by,
            "retired_at": self.retired_at,
            "imported_by": self.imported_by,
            "imported_at": self.imported_at,
            "builtin": self.builtin,
            "source": self.source,
            "package_dir": str(self.package_dir),
            "card_sha256": self.card_sha256,
            "weights_sha256": self.weights_sha256,
            "approved_weights_sha256": self.approved_weights_sha256,
            "warnings": list(self.warnings),
        }


class ModelRegistry:
    """Models of one data folder.

    Parameters
    ----------
    data_dir
        The node's data folder; the database is ``data_dir / "contourd.db"``
        and packages go to ``data_dir / "models"``. Created when missing.
    builtin_dir
        Folder of built-in packages registered on open (default: the ones
        shipped in ``model_store/builtin``); ``None`` registers none.
    database
        Where the rows live (default SQLite ``data_dir / "contourd.db"``); on a
        shared PostgreSQL, approving a version once approves it for every worker.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        builtin_dir: Path | None = BUILTIN_DIR,
        database: Database | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.models_dir = DataFolder(self.data_dir).models
        self.database = database or Database(self.data_dir)
        self.db_path = self.database.sqlite_path
        self.conn = self.database.connect()
        if builtin_dir is not None:
            self.register_builtins(builtin_dir)

    def close(self) -> None:
        """Close the database connection."""
        self.conn.close()

    def __enter__(self) -> ModelRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema and transactions -------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[DbConnection]:
        """One write transaction, so concurrent writers queue rather than interleave."""
        with self.conn.transaction() as conn:
            yield conn

    def _count(self, name: str, version: str) -> int:
        rows = self.conn.rows(
            "SELECT COUNT(*) AS n FROM models WHERE name = ? AND version = ?", (name, version)
        )
        return int(rows[0]["n"])

    def _audit(
        self,
        conn: DbConnection,
        *,
        by: str,
        action: str,
        name: str,
        version: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        label: int | None = None,
        note: str | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO audit (at, by, action, name, version, label, before, after, note) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                utc_now(),
                by,
                action,
                name,
                version,
                label,
                None if before is None else json.dumps(before, sort_keys=True),
                None if after is None else json.dumps(after, sort_keys=True),
                note,
            ),
        )

    def record(
        self,
        *,
        by: str,
        action: str,
        subject: str,
        after: dict[str, Any] | None = None,
        note: str | None = None,
    ) -> None:
        """Write a change that is not a model's to the audit trail (a job resent or
        retried, a web user added): ``subject`` names what changed (``job 12``,
        ``user alice``) and goes in the ``name`` column; ``version`` stays empty."""
        who = _check_by(by)
        with self._transaction() as conn:
            self._audit(
                conn,
                by=who,
                action=action,
                name=subject,
                version="",
                before=None,
                after=after,
                note=note,
            )

    # -- reading -------------------------------------------------------------------

    def _overrides(self, name: str, version: str) -> dict[int, RoiOverride]:
        result = {}
        for row in self.conn.rows(
            "SELECT * FROM roi_overrides WHERE name = ? AND version = ?", (name, version)
        ):
            result[row["label"]] = RoiOverride(
                **{
                    **_columns_of(RoiOverride, row),  # its ``name`` column is the model's
                    "name": row["roi_name"],
                    "color": tuple(json.loads(row["color"])) if row["color"] else None,
                }
            )
        return result

    def _record(self, row: dict[str, Any]) -> ModelRecord:
        card = parse_card(row["card_yaml"], source=f"registry card of {row['name']}")
        return ModelRecord(
            **{
                **_columns_of(ModelRecord, row),
                "card": card,
                "package_dir": self.data_dir / row["package_dir"],
                "builtin": bool(row["builtin"]),
                "overrides": self._overrides(row["name"], row["version"]),
            }
        )

    def list_models(self) -> list[ModelRecord]:
        """Every registered version, by name then newest version first."""
        records = [self._record(row) for row in self.conn.rows("SELECT * FROM models")]
        records.sort(key=lambda r: semver_key(r.version), reverse=True)
        records.sort(key=lambda r: r.name)
        return records

    def _versions(self, name: str) -> list[ModelRecord]:
        rows = self.conn.rows("SELECT * FROM models WHERE name = ?", (name,))
        return sorted((self._record(r) for r in rows), key=lambda r: semver_key(r.version))

    def get(self, name: str, version: str | None = None) -> ModelRecord:
        """One version (the newest of any status when ``version`` is None).

        Raises
        ------
        ModelNotFoundError
            Naming the known models or versions.
        """
        versions = self._versions(name)
        if not versions:
            known = sorted({r["name"] for r in self.conn.rows("SELECT name FROM models")})
            raise ModelNotFoundError(
                f"no model named {name!r} in {self.database.label} "
                f"(known: {', '.join(known) or 'none'}); "
                "import it with `contourd models import PACKAGE`"
            )
        if version is None:
            return versions[-1]
        for record in versions:
            if record.version == version:
                return record
        raise ModelNotFoundError(
            f"model {name!r} has no version {version!r} (registered: "
            f"{', '.join(r.version for r in versions)})"
        )

    def audit_trail(self, name: str | None = None, version: str | None = None) -> list[AuditEntry]:
        """Audit rows, oldest first, optionally for one model (and version)."""
        where, args = [], []
        if name is not None:
            where.append("name = ?")
            args.append(name)
        if version is not None:
            where.append("version = ?")
            args.append(version)
        rows = self.conn.rows(
            "SELECT * FROM audit"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY id",
            args,
        )
        return [
            AuditEntry(
                **{
                    **_columns_of(AuditEntry, r),
                    "before": json.loads(r["before"]) if r["before"] else None,
                    "after": json.loads(r["after"]) if r["after"] else None,
                }
            )
            for r in rows
        ]

    # -- import --------------------------------------------------------------------

    def import_package(
        self, path: Path, by: str, *, builtin: bool = False, source: Path | None = None
    ) -> ModelRecord:
        """Check a package folder or zip and copy it into the data folder, unapproved.

        Parameters
        ----------
        path
            Package folder or ``.zip`` (see :mod:`model_store.package`).
        by
            Who imports it (audit).
        builtin
            Mark as a built-in model (done by :meth:`register_builtins`).
        source
            What to record as the source (default ``path``; an nnU-Net model's
            folder when ``path`` is the package converted from it).

        Returns
        -------
        ModelRecord
            The new record; its ``warnings`` hold TG-263 naming remarks.

        Raises
        ------
        ModelPackageError
            When any import check fails (pickle, DICOM, patient data, labels...).
        ModelRegistryError
            When that name and version is already registered.
        """
        who = _check_by(by)
        with open_package(Path(path)) as package:
            card = package.card
            dest = self.models_dir / card.name / card.version
            if self._count(card.name, card.version):
                raise ModelRegistryError(
                    f"model {card.name} {card.version} is already registered; give the changed "
                    "package a new version in its model.yaml and import that"
                )
            tmp = self.models_dir / card.name / f".import-{uuid.uuid4().hex}"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            for rel in package.files:
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(package.root / rel, target)
            # The copy must be what was checked.
            if sha256_file(tmp / CARD_FILE) != package.card_sha256 or (
                package.weights_sha256 is not None
                and sha256_file(tmp / WEIGHTS_FILE) != package.weights_sha256
            ):
                shutil.rmtree(tmp, ignore_errors=True)
                raise ModelPackageError(f"{path} changed while it was being imported; retry")
            _make_read_only(tmp)
            row = {
                "name": card.name,
                "version": card.version,
                "status": IMPORTED,
                "model_type": card.model_type,
                "modality": card.modality,
                "body_site": card.body_site,
                "description": card.description,
                "card_yaml": (package.root / CARD_FILE).read_text(encoding="utf-8"),
                "package_dir": (self.models_dir / card.name / card.version)
                .relative_to(self.data_dir)
                .as_posix(),
                "card_sha256": package.card_sha256,
                "weights_sha256": package.weights_sha256,
                "source": str(Path(source if source is not None else path).resolve()),
                "builtin": int(builtin),
                "imported_by": who,
                "imported_at": utc_now(),
            }
            try:
                with self._transaction() as conn:
                    columns, marks = ", ".join(row), ", ".join("?" * len(row))
                    conn.execute(
                        f"INSERT INTO models ({columns}) VALUES ({marks})", list(row.values())
                    )
                    self._audit(
                        conn,
                        by=who,
                        action="import",
                        name=card.name,
                        version=card.version,
                        before=None,
                        after={
                            "status": IMPORTED,
                            "card_sha256": package.card_sha256,
                            "weights_sha256": package.weights_sha256,
                            "source": row["source"],
                        },
                        note="built-in model" if builtin else None,
                    )
                    if dest.exists():  # left by an import that crashed before its commit
                        _remove_tree(dest)
                    tmp.rename(dest)
            except integrity_errors() as err:
                _remove_tree(tmp)
                raise ModelRegistryError(
                    f"model {card.name} {card.version} was registered by another process "
                    "meanwhile; give the package a new version"
                ) from err
            except BaseException:
                _remove_tree(tmp)
                raise
            warnings = package.warnings
        for warning in warnings:
            log.log(
                logging.INFO if builtin else logging.WARNING,
                "model %s %s: %s",
                card.name,
                card.version,
                warning,
            )
        record = self.get(card.name, card.version)
        return ModelRecord(**{**record.__dict__, "warnings": tuple(warnings)})

    def register_builtins(self, builtin_dir: Path = BUILTIN_DIR) -> list[ModelRecord]:
        """Register each built-in package not yet in this data folder (unapproved).

        A built-in that fails its checks is logged and skipped, so one bad
        package never stops the registry from opening.
        """
        added: list[ModelRecord] = []
        if not builtin_dir.is_dir():
            return added
        for folder in sorted(p for p in builtin_dir.iterdir() if p.is_dir()):
            card_path = folder / CARD_FILE
            if not card_path.is_file():
                log.debug("built-in folder %s has no %s yet; skipped", folder, CARD_FILE)
                continue
            try:
                card = parse_card(card_path.read_text(encoding="utf-8"), source=str(card_path))
                if self._count(card.name, card.version):
                    continue
                added.append(self.import_package(folder, BUILTIN_BY, builtin=True))
            except ModelRegistryError:
                continue  # another process registered it first
            except ModelPackageError as err:
                log.warning("built-in model in %s not registered: %s", folder, err)
        return added

    # -- status changes ------------------------------------------------------------

    def approve(self, name: str, version: str, by: str, note: str | None = None) -> ModelRecord:
        """Approve a version for clinical routing, recording the files' sha256 now.

        Raises
        ------
        ModelNotFoundError
            Unknown name or version.
        ModelRegistryError
            Already approved.
        ModelIntegrityError
            When the stored files no longer match the hashes recorded at import.
        """
        who = _check_by(by)
        record = self._get_unless(name, version, APPROVED)
        card_sha = _hash_or_none(record.package_dir / CARD_FILE)
        weights_sha = (
            _hash_or_none(record.package_dir / WEIGHTS_FILE)
            if record.weights_sha256 is not None
            else None
        )
        if card_sha != record.card_sha256 or weights_sha != record.weights_sha256:
            raise ModelIntegrityError(
                f"model {name} {version}: the stored package in {record.package_dir} no longer "
                f"matches the sha256 recorded at import (card {record.card_sha256[:16]}..., "
                f"weights {(record.weights_sha256 or 'none')[:16]}...); refusing to approve it. "
                "Re-import the original package under a new version"
            )
        now = utc_now()
        before = _status_view(record)
        with self._transaction() as conn:
            conn.execute(
                "UPDATE models SET status = ?, approved_by = ?, approved_at = ?, "
                "approval_note = ?, approved_card_sha256 = ?, approved_weights_sha256 = ?, "
                "retired_by = NULL, retired_at = NULL, retire_note = NULL "
                "WHERE name = ? AND version = ?",
                (APPROVED, who, now, note, card_sha, weights_sha, name, version),
            )
            after = {
                "status": APPROVED,
                "approved_by": who,
                "approved_at": now,
                "approved_card_sha256": card_sha,
                "approved_weights_sha256": weights_sha,
            }
            self._audit(
                conn,
                by=who,
                action="approve",
                name=name,
                version=version,
                before=before,
                after=after,
                note=note,
            )
        return self.get(name, version)

    def _get_unless(self, name: str, version: str, status: str) -> ModelRecord:
        """The version, unless it is already in ``status`` (approved or retired)."""
        record = self.get(name, version)
        if record.status == status:
            by, at = (
                (record.approved_by, record.approved_at)
                if status == APPROVED
                else (record.retired_by, record.retired_at)
            )
            raise ModelRegistryError(
                f"model {name} {version} is already {status} (by {by} at {at})"
            )
        return record

    def retire(self, name: str, version: str, by: str, note: str | None = None) -> ModelRecord:
        """Take a version out of use; routing and ``segment`` refuse it afterwards.

        Raises
        ------
        ModelNotFoundError, ModelRegistryError
            Unknown version, or already retired.
        """
        who = _check_by(by)
        record = self._get_unless(name, version, RETIRED)
        now = utc_now()
        with self._transaction() as conn:
            conn.execute(
                "UPDATE models SET status = ?, retired_by = ?, retired_at = ?, retire_note = ? "
                "WHERE name = ? AND version = ?",
                (RETIRED, who, now, note, name, version),
            )
            self._audit(
                conn,
                by=who,
                action="retire",
                name=name,
                version=version,
                before=_status_view(record),
                after={"status": RETIRED, "retired_by": who, "retired_at": now},
                note=note,
            )
        return self.get(name, version)

    def set_roi(
        self,
        name: str,
        version: str,
        label: int,
        *,
        by: str,
        roi_name: str | None = None,
        color: tuple[int, int, int] | list[int] | None = None,
        interpreted_type: str | None = None,
        reset: bool = False,
        note: str | None = None,
    ) -> tuple[RoiSpec, list[str]]:
        """Override an ROI's name, colour and/or interpreted type for this clinic.

        Parameters
        ----------
        label
            The ROI's label in the card (unchanged by overrides).
        roi_name, color, interpreted_type
            New values; ``None`` keeps the current override or card value.
        reset
            Drop the override: back to the card's values.

        Returns
        -------
        tuple
            The effective ROI after the change and TG-263 naming warnings.

        Raises
        ------
        ModelRegistryError
            Unknown label, invalid value, duplicate name, or nothing to change.
        """
        who = _check_by(by)
        record = self.get(name, version)
        labels = [r.label for r in record.card.rois]
        if label not in labels:
            raise ModelRegistryError(
                f"model {name} {version} has no ROI label {label} (labels: {labels})"
            )
        if not reset and roi_name is None and color is None and interpreted_type is None:
            raise ModelRegistryError("set-roi needs --name, --color, --type or --reset")
        try:
            new_name = validate_roi_name(roi_name) if roi_name is not None else None
            new_color = validate_color(tuple(color)) if color is not None else None  # type: ignore[arg-type]
        except ValueError as err:
            raise ModelRegistryError(str(err)) from err
        if interpreted_type is not None and interpreted_type not in INTERPRETED_TYPES:
            raise ModelRegistryError(
                f"interpreted type {interpreted_type!r} is not an RT ROI Interpreted Type; "
                f"use one of {', '.join(INTERPRETED_TYPES)}"
            )
        old = record.overrides.get(label, RoiOverride(label=label))
        now = utc_now()
        new = RoiOverride(
            label=label,
            name=new_name if new_name is not None else old.name,
            color=new_color if new_color is not None else old.color,
            interpreted_type=interpreted_type or old.interpreted_type,
            updated_by=who,
            updated_at=now,
        )
        overrides = dict(record.overrides)
        if reset:
            overrides.pop(label, None)
        else:
            overrides[label] = new
        before_roi = next(r for r in record.effective_rois() if r.label == label)
        after_rois = apply_overrides(record.card.rois, overrides)
        after_roi = next(r for r in after_rois if r.label == label)
        others = [r.name.lower() for r in after_rois if r.label != label]
        if after_roi.name.lower() in others:
            raise ModelRegistryError(
                f"ROI name {after_roi.name!r} is already used by another ROI of {name} "
                f"{version}; ROI names in one structure set must be unique"
            )
        with self._transaction() as conn:
            conn.execute(
                "DELETE FROM roi_overrides WHERE name = ? AND version = ? AND label = ?",
                (name, version, label),
            )
            if not reset:
                conn.execute(
                    "INSERT INTO roi_overrides (name, version, label, roi_name, color, "
                    "interpreted_type, updated_by, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        version,
                        label,
                        new.name,
                        json.dumps(list(new.color)) if new.color else None,
                        new.interpreted_type,
                        who,
                        now,
                    ),
                )
            self._audit(
                conn,
                by=who,
                action="reset-roi" if reset else "set-roi",
                name=name,
                version=version,
                label=label,
                before=_roi_view(before_roi),
                after=_roi_view(after_roi),
                note=note,
            )
        warning = name_warning(after_roi.name)
        return after_roi, [warning] if warning else []

    # -- export and resolve --------------------------------------------------------

    def export(self, name: str, version: str, dest: Path, by: str) -> Path:
        """Write the stored package, unchanged, to ``dest`` (``.zip`` file or new folder).

        The clinic's overrides are not part of the package and are not exported.

        Raises
        ------
        ModelIntegrityError
            When the stored files no longer match their import hashes.
        ModelRegistryError
            When ``dest`` already exists.
        """
        who = _check_by(by)
        record = self.get(name, version)
        _resolved(record, require_approved=False).verify_weights()
        dest = Path(dest)
        if dest.exists():
            raise ModelRegistryError(f"export destination {dest} exists; choose a new path")
        files = sorted(p for p in record.package_dir.rglob("*") if p.is_file())
        if dest.suffix.lower() == ".zip":
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for path in files:
                    archive.write(path, path.relative_to(record.package_dir).as_posix())
        else:
            shutil.copytree(record.package_dir, dest)
            for path in dest.rglob("*"):
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
        with self._transaction() as conn:
            self._audit(
                conn,
                by=who,
                action="export",
                name=name,
                version=version,
                before=None,
                after={"dest": str(dest.resolve())},
            )
        return dest

    def resolve(
        self, name: str, version: str | None = None, *, require_approved: bool = True
    ) -> ApprovedModel:
        """A runnable model after checking its files' hashes.

        With ``require_approved`` (the default, used by routing and ``segment``)
        only approved versions qualify and ``version=None`` means the newest
        approved one. Without it (evaluation before approval), any status
        qualifies, ``None`` means the newest version, and the import hashes are
        checked.

        Raises
        ------
        ModelNotFoundError, ModelNotApprovedError, ModelIntegrityError
        """
        if not require_approved:
            model = _resolved(self.get(name, version), require_approved=False)
            model.verify_weights()
            return model
        versions = self._versions(name)
        if not versions:
            self.get(name)  # raises ModelNotFoundError with the known names
        approved = [r for r in versions if r.status == APPROVED]
        if version is None:
            if not approved:
                statuses = ", ".join(f"{r.version} ({r.status})" for r in versions)
                raise ModelNotApprovedError(
                    f"model {name!r} has no approved version (registered: {statuses}); approve "
                    f"one with `contourd models approve {name} VERSION --by NAME`"
                )
            record = approved[-1]
        else:
            record = self.get(name, version)
            if record.status != APPROVED:
                raise ModelNotApprovedError(
                    f"model {name} {version} is {record.status!r}, not approved; approve it "
                    f"with `contourd models approve {name} {version} --by NAME` or use an "
                    f"approved version ({', '.join(r.version for r in approved) or 'none'})"
                )
        model = _resolved(record, require_approved=True)
        model.verify_weights()
        return model

    def resolve_approved(self, name: str, version: str | None = None) -> ApprovedModel:
        """The approved version (newest approved when ``version`` is None), hash-checked.

        Raises
        ------
        ModelNotFoundError
            No such model or version.
        ModelNotApprovedError
            The version (or every version) is imported or retired, not approved.
        ModelIntegrityError
            The card or weights on disk differ from the sha256 recorded at approval.
        """
        return self.resolve(name, version, require_approved=True)


def _resolved(record: ModelRecord, *, require_approved: bool) -> ApprovedModel:
    use_approval = require_approved or record.status == APPROVED
    weights_sha = record.approved_weights_sha256 if use_approval else record.weights_sha256
    card_sha = record.approved_card_sha256 if use_approval else record.card_sha256
    return ApprovedModel(
        name=record.name,
        version=record.version,
        status=record.status,
        card=record.card,
        package_dir=record.package_dir,
        weights_path=record.package_dir / WEIGHTS_FILE if record.weights_sha256 else None,
        weights_sha256=weights_sha,
        card_sha256=card_sha or record.card_sha256,
        approved_by=record.approved_by if use_approval else None,
        approved_at=record.approved_at if use_approval else None,
        overrides=dict(record.overrides),
    )


def _status_view(record: ModelRecord) -> dict[str, Any]:
    return {
        "status": record.status,
        "approved_by": record.approved_by,
        "approved_at": record.approved_at,
        "retired_by": record.retired_by,
        "retired_at": record.retired_at,
    }


def _roi_view(roi: RoiSpec) -> dict[str, Any]:
    return {
        "name": roi.name,
        "color": list(roi.color),
        "interpreted_type": roi.interpreted_type,
    }


def _hash_or_none(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def _make_read_only(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def _remove_tree(root: Path) -> None:
    if root.exists():
        for path in root.rglob("*"):
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(root, ignore_errors=True)
