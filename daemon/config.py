"""The node's configuration file, validated once at start.

``load_config(path)`` reads YAML into :class:`ContourdConfig` (pydantic v2,
``extra="forbid"`` everywhere). Without a file, :func:`default_config` gives the
embedded defaults (data folder ``./var``, AE title CONTOURD, port 11112).
Each section class is owned by the issue/module named in its docstring; add
fields to your own section only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from contourd.database import Database
from contourd.errors import ConfigError, DatabaseError
from daemon.config_diagnostics import (
    ConfigIssue,
    MarkedYaml,
    describe_validation_error,
    issues_text,
    parse_yaml,
    yaml_error_issue,
)
from routing.rules import Rule
from routing.suggest import did_you_mean


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class TlsConfig(StrictModel):
    """DICOM TLS for the SCP (owner: receive, daemon/scp.py)."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    require_client_cert: bool = False


class NodeConfig(StrictModel):
    """The DICOM node itself (owner: receive, daemon/scp.py).

    ``allowed_callers`` entries are calling AE titles, optionally with the one
    address they may call from (``CTSIM1@10.1.2.3``); empty lets anyone call.
    ``port: 0`` lets the OS pick a free port (tests). ``min_free_disk_mb``:
    new associations are refused while the data folder has less free space.
    ``max_pdu_bytes``: the largest P-DATA PDU we accept (0: no limit).
    ``accept_sop_classes``: ``all`` (default) accepts every storage SOP class
    pynetdicom knows, stores the CT/MR/RTSTRUCT classes the node can use and
    counts the rest as received-and-ignored (answered with success, like a
    PACS); ``contourable`` refuses the other classes at negotiation.
    ``fsync``: fsync each instance before acknowledging it (one fsync, which
    on ext4/XFS/btrfs also commits the rename); ``fsync_directory`` adds a
    folder fsync per instance for strict POSIX durability (see docs/receive.md).
    """

    ae_title: str = Field(default="CONTOURD", min_length=1, max_length=16)
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=0, le=65535)
    data_dir: Path = Path("./var")
    allowed_callers: list[str] = Field(default_factory=list)
    fsync: bool = True
    fsync_directory: bool = False
    maximum_associations: int = Field(default=10, ge=1)
    min_free_disk_mb: int = Field(default=1024, ge=0)
    max_pdu_bytes: int = Field(default=262144, ge=0)
    accept_sop_classes: Literal["all", "contourable"] = "all"
    network_timeout_s: float = Field(default=60.0, gt=0)
    tls: TlsConfig | None = None


class SeriesConfig(StrictModel):
    """Series assembly (owner: receive, daemon/series_assembler.py).

    A series is complete after ``complete_after_s`` seconds without a new
    instance, or at association release when ``complete_on`` is
    ``association_release``, or when ``expected_count_attribute`` (a DICOM
    keyword in the first instance giving the number of instances) is reached.
    A completion whose hand-off raised is retried after ``handoff_retry_s``.
    A series that is not whole (its association was aborted, or its headers
    show gaps; see daemon/series_completeness.py) waits for the rest and is
    ended as ``failed`` ``incomplete_wait_s`` seconds after its last image.
    """

    complete_after_s: float = Field(default=10.0, gt=0)
    complete_on: Literal["quiet_period", "association_release"] = "quiet_period"
    expected_count_attribute: str | None = None
    incomplete_wait_s: float = Field(default=600.0, gt=0)
    handoff_retry_s: float = Field(default=30.0, gt=0)


class DestinationTlsConfig(StrictModel):
    """TLS for sending to one destination (owner: dispatch).

    ``ca_file`` verifies the peer's certificate (the system store when unset);
    ``cert_file``/``key_file`` give our client certificate when the peer asks.
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True


class DestinationConfig(StrictModel):
    """A C-STORE peer, a folder or a DICOMweb STOW-RS service that results are sent to
    (owner: dispatch).

    Either ``ae_title`` + ``host`` + ``port`` (DICOM C-STORE), or ``folder``
    (files are written there for planning systems that import from a share),
    or ``stow_url`` (the DICOMweb service root, e.g.
    ``https://pacs.example/dicom-web``; results are POSTed to
    ``{stow_url}/studies``), with ``stow_username`` and ``stow_password_file``
    (a file holding the password) when it needs HTTP Basic.
    """

    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    folder: Path | None = None
    tls: DestinationTlsConfig | None = None
    stow_url: str | None = Field(default=None, pattern=r"^https?://")
    stow_username: str | None = None
    stow_password_file: Path | None = None

    @model_validator(mode="after")
    def _network_or_folder(self) -> DestinationConfig:
        network = [self.ae_title, self.host, self.port]
        kinds = sum(
            [
                any(v is not None for v in network),
                self.folder is not None,
                self.stow_url is not None,
            ]
        )
        if kinds > 1:
            raise ValueError(
                "a destination is one of a C-STORE peer, a folder or a stow_url, not several"
            )
        if self.folder is None and self.stow_url is None and any(v is None for v in network):
            raise ValueError(
                "a destination needs either ae_title, host and port (C-STORE), folder, or "
                f"stow_url; got ae_title={self.ae_title!r}, host={self.host!r}, port={self.port!r}"
            )
        if (self.stow_username is None) != (self.stow_password_file is None):
            raise ValueError(
                "stow_username and stow_password_file go together; set both or neither"
            )
        return self


class DispatchConfig(StrictModel):
    """Sending results (owner: dispatch, daemon/dispatch.py).

    Attempt n (1-based) that fails is retried after
    ``min(retry_initial_s * retry_factor**(n-1), retry_max_s)`` seconds, until
    ``max_attempts`` attempts have failed; then the job is ``failed``.
    ``lease_s``: how long one send attempt holds its delivery; a sender that
    dies without the supervisor seeing it (the whole node killed) blocks the
    delivery that long. Keep it above the longest send (connect, one
    ``network_timeout_s`` per file, release).
    """

    calling_ae_title: str = "CONTOURD"
    max_attempts: int = Field(default=8, ge=1)
    retry_initial_s: float = Field(default=5.0, gt=0)
    retry_factor: float = Field(default=2.0, ge=1)
    retry_max_s: float = Field(default=600.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    network_timeout_s: float = Field(default=60.0, gt=0)
    poll_interval_s: float = Field(default=1.0, gt=0)
    max_pdu_bytes: int = Field(default=0, ge=0)
    lease_s: float = Field(default=300.0, gt=0)


class WorkerConfig(StrictModel):
    """Worker processes that run the models (owner: daemon/worker.py)."""

    processes: int = Field(default=1, ge=1)
    lease_s: float = Field(default=60.0, gt=0)
    poll_interval_s: float = Field(
        default=0.5,
        gt=0,
        description="SQLite: how often an idle worker looks for a job. PostgreSQL: "
        "workers wake on NOTIFY and look again at least every listen_recheck_s.",
    )
    listen_recheck_s: float = Field(
        default=5.0,
        gt=0,
        description="PostgreSQL: an idle worker also looks for jobs this often (jobs "
        "whose lease ran out or whose schedule opened send no notification).",
    )
    heartbeat_s: float = Field(
        default=5.0, gt=0, description="How often an idle worker updates its workers row."
    )
    max_attempts: int = Field(default=3, ge=1)
    device: str = "auto"
    uid_root: str | None = Field(
        default=None,
        description=(
            "Your organisation's DICOM UID root for new RTSTRUCT/SEG UIDs; unset: "
            "pydicom's generate_uid() root (1.2.826.0.1.3680043.8.498.)"
        ),
    )
    preview: bool = True


class RetentionConfig(StrictModel):
    """Deleting images once their jobs are finished (owner: daemon/retention.py).

    Images of a series are deleted ``delete_images_after_h`` hours after the
    last of its jobs finished (sent, failed, not routed, shadow). When free
    disk space falls below ``emergency_free_disk_mb``, finished series are
    purged at once, oldest first; unsent results are never touched.
    """

    delete_images_after_h: float = Field(default=72.0, ge=0)
    check_interval_s: float = Field(default=300.0, gt=0)
    emergency_free_disk_mb: int = Field(default=2048, ge=0)


class HttpConfig(StrictModel):
    """The node's one HTTP server (owner: daemon/web): ``/healthz``, ``/metrics``,
    the pages, the REST API (``/api``) and DICOMweb STOW-RS (``/dicomweb``).

    ``/healthz`` and ``/metrics`` need no login; everything else does: a user
    of ``contourd users`` (password, or HTTP Basic for scripts) or, with
    ``auth: proxy_header``, the user a reverse proxy authenticated and names in
    ``proxy_user_header`` (the user must still exist in ``contourd users`` for
    its role; only set this behind a proxy that strips the header from clients).

    ``dispatch_failing_unhealthy_s``: ``/healthz`` answers 503 once a result
    has waited this long for a destination that keeps refusing it.
    """

    enabled: bool = True
    host: str = Field(
        default="127.0.0.1",
        description="Listen address; 127.0.0.1 keeps the pages on this machine",
    )
    port: int = Field(default=8080, ge=0, le=65535)
    dispatch_failing_unhealthy_s: float = Field(default=600.0, gt=0)
    auth: Literal["password", "proxy_header"] = "password"
    proxy_user_header: str = "X-Remote-User"
    tls_certificate: Path | None = Field(
        default=None, description="PEM certificate: serve HTTPS (with tls_private_key)"
    )
    tls_private_key: Path | None = None
    session_max_age_s: int = Field(default=8 * 3600, gt=0)
    show_patient_identifiers: bool = Field(
        default=False,
        description="Show patient name, ID and birth date to logged-in users on job pages "
        "and in /api/jobs/{id}; off: never shown anywhere",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> HttpConfig:
        if (self.tls_certificate is None) != (self.tls_private_key is None):
            raise ValueError(
                "http.tls_certificate and http.tls_private_key go together; set both or neither"
            )
        return self


class FeedbackConfig(StrictModel):
    """Measuring the clinicians' edits (owner: daemon/feedback_intake.py).

    An RTSTRUCT that arrives and references a series contourd contoured is
    compared with the structure set contourd made for it, when its sender's
    AE title is in ``senders`` (empty: any sender) and its Approval Status is
    in ``approval_statuses``. ``tolerance_mm``: surface Dice and added path
    length tolerance. ``roi_names``: model ROI name -> the names the planning
    system uses for it (exact, case-insensitive), beyond TG-263 matching.
    ``metrics_window_days``: the rolling window of the medians on ``/metrics``.
    ``keep_for_training``: keep the images of reviewed cases out of retention.
    """

    enabled: bool = True
    senders: list[str] = Field(default_factory=list)
    approval_statuses: list[str] = Field(default_factory=lambda: ["APPROVED"])
    tolerance_mm: float = Field(default=2.0, ge=0)
    roi_names: dict[str, list[str]] = Field(default_factory=dict)
    metrics_window_days: float = Field(default=30.0, gt=0)
    keep_for_training: bool = False


class ContourdConfig(StrictModel):
    """The whole configuration file."""

    database: str | None = Field(
        default=None,
        description="Where jobs, series, models and audit rows live: absent for SQLite "
        "in the data folder (one machine), or postgresql://USER:PASSWORD@HOST:PORT/DBNAME "
        "shared by several receivers and workers (see docs/operations.md, Scaling out).",
    )
    node: NodeConfig = Field(default_factory=NodeConfig)
    series: SeriesConfig = Field(default_factory=SeriesConfig)
    destinations: dict[str, DestinationConfig] = Field(default_factory=dict)
    dispatch: DispatchConfig = Field(default_factory=DispatchConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    rules: list[Rule] = Field(default_factory=list)
    body_part_synonyms: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Extra body part synonyms for routing: canonical name -> aliases "
        "(added to the built-in table in routing/body_part.py).",
    )

    @property
    def data_dir(self) -> Path:
        """The data folder (spool, SQLite database, model store, results)."""
        return self.node.data_dir

    def open_database(self) -> Database:
        """The node's database: ``database`` when set, else SQLite in the data folder."""
        return Database(self.node.data_dir, self.database)

    @field_validator("database")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                Database(Path("."), value)
            except DatabaseError as err:
                raise ValueError(str(err)) from err
        return value


EMBEDDED_RULES: list[dict[str, object]] = [
    {
        "name": "head and neck CT (embedded default)",
        "match": {"modality": "CT", "body_part": "HEADNECK"},
        "model": ["hn-oar", "body"],
    },
    {"name": "every CT (embedded default)", "match": {"modality": "CT"}, "model": "body"},
]
"""Rules used without a config file: results stay in ``<data_dir>/results`` (no
destinations). They run only once the models are approved; until then each
job fails with the ``contourd models approve`` command in its message."""


def default_config() -> ContourdConfig:
    """Embedded defaults used when no config file is given."""
    return ContourdConfig.model_validate({"rules": EMBEDDED_RULES})


def load_config(path: Path | None, *, relative_to: Path | None = None) -> ContourdConfig:
    """Read and validate a config file; ``None`` gives the embedded defaults.

    A relative ``node.data_dir`` is resolved against ``relative_to`` (default:
    the config file's folder; workers read the supervisor's copy of the last
    valid config and pass the original file's folder).

    Raises
    ------
    ConfigError
        Listing every problem as ``file:line:column: key.path: message`` with
        the bad value and, for misspelt keys or values, a suggestion.
    """
    if path is None:
        return default_config()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"cannot read config file {path}: {err}; check the path and that it is UTF-8 text"
        ) from err
    config = load_config_text(text, source=str(path))
    if not config.node.data_dir.is_absolute():
        base = Path(path).parent if relative_to is None else Path(relative_to)
        config.node.data_dir = (base / config.node.data_dir).resolve()
    return config


def load_config_text(text: str, source: str = "<config>") -> ContourdConfig:
    """Validate config YAML text; ``source`` names it in error messages.

    Besides the schema, checks that rule names are unique and that every
    ``send_to`` names a destination in ``destinations:``. Relative paths are
    left as written (see :func:`load_config`).
    """
    try:
        marked = parse_yaml(text, source)
    except yaml.YAMLError as err:
        raise ConfigError(issues_text([yaml_error_issue(err, source)], source)) from err
    raw = marked.data if marked.data is not None else {}
    if not isinstance(raw, dict):
        issue = ConfigIssue(
            source,
            marked.mark_for((), key=False),
            (),
            "the file must be a mapping of sections (node:, rules:, ...), "
            f"got {type(raw).__name__}",
        )
        raise ConfigError(issues_text([issue], source))
    issues = list(marked.duplicate_keys)
    try:
        config = ContourdConfig.model_validate(raw)
    except ValidationError as err:
        issues.extend(describe_validation_error(err, ContourdConfig, marked, source))
        raise ConfigError(issues_text(issues, source)) from err
    issues.extend(_reference_issues(config, marked, source))
    if issues:
        raise ConfigError(issues_text(issues, source))
    return config


def _reference_issues(config: ContourdConfig, marked: MarkedYaml, source: str) -> list[ConfigIssue]:
    """Rule names used twice and ``send_to`` names that are not destinations."""
    issues: list[ConfigIssue] = []
    seen: set[str] = set()
    known = sorted(config.destinations)
    for index, rule in enumerate(config.rules):
        if rule.name in seen:
            path: tuple[str | int, ...] = ("rules", index, "name")
            issues.append(
                ConfigIssue(
                    source,
                    marked.mark_for(path, key=False),
                    path,
                    f"rule name {rule.name!r} is used by an earlier rule; names must be unique",
                )
            )
        seen.add(rule.name)
        raw_send_to = rule.send_to
        for position, destination in enumerate(rule.destinations):
            if destination in config.destinations:
                continue
            path = ("rules", index, "send_to")
            if isinstance(raw_send_to, list):
                path = (*path, position)
            listed = ", ".join(known) if known else "none are defined"
            issues.append(
                ConfigIssue(
                    source,
                    marked.mark_for(path, key=False),
                    path,
                    f"unknown destination {destination!r}{did_you_mean(destination, known)} "
                    f"(destinations: {listed}); add it under destinations: or fix the name",
                )
            )
    return issues
