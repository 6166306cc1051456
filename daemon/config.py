"""The node's configuration file, validated once at start.

``load_config(path)`` reads YAML into :class:`ContourdConfig` (pydantic v2,
``extra="forbid"`` everywhere). Without a file, :func:`default_config` gives the
embedded defaults (data folder ``./var``, AE title CONTOURD, port 11112).
Each section class is owned by the issue/module named in its docstring; add
fields to your own section only.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contourd.errors import ConfigError
from routing.rules import Rule


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
    """The DICOM node itself (owner: receive, daemon/scp.py)."""

    ae_title: str = "CONTOURD"
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=1, le=65535)
    data_dir: Path = Path("./var")
    allowed_callers: list[str] = Field(default_factory=list)
    fsync: bool = True
    maximum_associations: int = Field(default=10, ge=1)
    min_free_disk_mb: int = Field(default=1024, ge=0)
    tls: TlsConfig | None = None


class SeriesConfig(StrictModel):
    """Series assembly (owner: receive, daemon/series_assembler.py)."""

    complete_after_s: float = Field(default=10.0, gt=0)
    complete_on: str = "quiet_period"


class DestinationConfig(StrictModel):
    """A C-STORE peer or a folder that results are sent to (owner: dispatch)."""

    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    folder: Path | None = None


class ContourdConfig(StrictModel):
    """The whole configuration file."""

    node: NodeConfig = Field(default_factory=NodeConfig)
    series: SeriesConfig = Field(default_factory=SeriesConfig)
    destinations: dict[str, DestinationConfig] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        """The data folder (spool, SQLite database, model store, results)."""
        return self.node.data_dir


def default_config() -> ContourdConfig:
    """Embedded defaults used when no config file is given."""
    return ContourdConfig()


def load_config(path: Path | None) -> ContourdConfig:
    """Read and validate a config file; ``None`` gives the embedded defaults.

    A relative ``node.data_dir`` is resolved against the config file's folder.
    """
    if path is None:
        return default_config()
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from err
    try:
        config = ContourdConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path}: {err}") from err
    if not config.node.data_dir.is_absolute():
        config.node.data_dir = (Path(path).parent / config.node.data_dir).resolve()
    return config
