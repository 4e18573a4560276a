"""One typed settings object for the whole broker.

Settings come from, in order of precedence: explicit keyword arguments, environment
variables prefixed ``MWLB_`` (``MWLB_DATABASE_URL`` ...), a TOML file passed with
``--config`` (keys are the field names without the prefix), then the defaults below.
Read once per process with :func:`load_settings`; every other module receives the
object it is handed and never reads the environment itself.
"""

from __future__ import annotations

import json
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from broker.hl7.message import HL7_VERSIONS
from broker.mapping import PACKAGED_PROFILES


class AckMode(StrEnum):
    """When the MLLP listener answers AA (see README, "ACK modes").

    ``application``: after the order or patient change is committed (HL7 original mode
    application acknowledgement), so content errors come back as AE on the same
    connection. ``store``: as soon as the raw message and its dedup key are committed;
    processing errors then surface as failed messages in the message store.
    """

    APPLICATION = "application"
    STORE = "store"


class StorageMode(StrEnum):
    """What the C-STORE SCP does with an instance once it is indexed."""

    DISCARD = "discard"
    KEEP = "keep"  # written under storage_dir/<study>/<series>/<sop>.dcm
    FORWARD = "forward"  # spooled under storage_dir, sent to the PACS, then deleted


class Destination(BaseModel):
    """An EHR endpoint that receives order status messages over MLLP."""

    model_config = {"extra": "forbid"}

    name: str = Field(description="Short name, used in the outbox and logs.")
    host: str
    port: int
    message_type: str = Field(
        default="ORM^O01",
        pattern=r"^(ORM\^O01|OMG\^O19|OMI\^O23)$",
        description="ORM^O01 (HL7 2.3.1, ORC-1 SC) or OMG^O19 / OMI^O23 (HL7 2.5.1).",
    )
    receiving_application: str = ""
    receiving_facility: str = ""
    triggers: list[str] = Field(
        default=["IP", "CM", "DC", "A", "SC"],
        description="Which order statuses to report (Table 0038; A = images available; "
        "SC = back to scheduled after 'incorrect worklist entry').",
    )


class AllowedAE(BaseModel):
    """A DICOM peer allowed to associate: its calling AE title, from these hosts (IP
    addresses or networks; empty = any), with this certificate subject CN when it
    comes over TLS (empty = any trusted certificate)."""

    model_config = {"extra": "forbid"}

    ae_title: str
    hosts: list[str] = []
    certificate_subject: str = ""


class EventDestination(BaseModel):
    """Where a UPS subscriber AE is reached for N-EVENT-REPORT (PS3.4 CC.2.4): its AE
    title (the Receiving AE of its subscriptions), host and port."""

    model_config = {"extra": "forbid"}

    ae_title: str = Field(min_length=1, max_length=16)
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)


def parse_event_destinations(value: Any) -> Any:
    """``AE=host:port,AE2=host:port`` (the environment's short form) as a list of
    :class:`EventDestination` fields; a JSON list, or a list from TOML, passes as it is."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return []
    if text.startswith("["):
        return json.loads(text)
    out = []
    for entry in text.split(","):
        ae_title, sep, address = entry.strip().partition("=")
        host, colon, port = address.strip().rpartition(":")
        if not (sep and colon and ae_title.strip() and host and port.strip().isdigit()):
            raise ValueError(f"{entry.strip()!r}: give AE=host:port (several separated by "
                             "commas)")
        out.append({"ae_title": ae_title.strip(), "host": host.strip("[]"),
                    "port": int(port)})
    return out


class AllowedSender(BaseModel):
    """An HL7 sender allowed to deliver: MSH-3 (and MSH-4 when given) from these hosts."""

    model_config = {"extra": "forbid"}

    sending_application: str
    sending_facility: str = ""
    hosts: list[str] = []


def default_mappings_dir() -> Path:
    """``./mappings`` when that directory exists (a checkout, or a site keeping its
    profiles next to where the broker runs), else the profiles in the package."""
    local = Path("mappings")
    return local if local.is_dir() else PACKAGED_PROFILES


class Settings(BaseSettings):
    """All broker settings. Field docs double as ``mwl-broker serve --help`` text."""

    model_config = SettingsConfigDict(env_prefix="MWLB_", extra="forbid")

    database_url: str = Field(
        default="sqlite:///var/mwl-broker.db",
        description="SQLAlchemy URL. Default: SQLite file under ./var (embedded mode).",
    )
    celery_broker_url: str = Field(
        default="",
        description="Empty: run tasks in-process (embedded). redis://host:6379/0: Celery workers.",
    )
    redis_visibility_timeout: int = Field(
        default=3600, description="Seconds before Redis redelivers an unacknowledged task."
    )
    mllp_host: str = Field(default="0.0.0.0", description="Address the MLLP listener binds.")
    mllp_port: int = Field(default=2575, ge=-1, le=65535,
                           description="MLLP listener port (0 = ephemeral, -1 = off).")
    mllp_max_frame_bytes: int = Field(
        default=1024 * 1024, description="Largest accepted MLLP frame; larger closes the link."
    )
    mllp_idle_timeout: float = Field(
        default=300.0, description="Seconds a connection may stay silent between messages."
    )
    mllp_frame_timeout: float = Field(
        default=30.0, description="Seconds allowed from a start block to its end block."
    )
    mllp_max_connections_per_ip: int = Field(
        default=50, description="Open MLLP connections allowed per client IP address (0 = no cap)."
    )
    dicom_host: str = Field(default="0.0.0.0", description="Address the DICOM server binds.")
    dicom_port: int = Field(default=11112, ge=-1, le=65535,
                            description="DICOM port (0 = ephemeral, -1 = off).")
    ae_title: str = Field(default="MWL_BROKER", description="The broker's DICOM AE title.")
    tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate (chain) of the broker: enables the TLS ports."
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of the broker.")
    tls_ca_file: Path | None = Field(
        default=None, description="PEM CA bundle that client certificates are checked against."
    )
    tls_require_client_cert: bool = Field(
        default=False, description="Mutual TLS: refuse TLS clients without a trusted certificate."
    )
    mllp_tls_port: int = Field(default=12575, ge=-1, le=65535,
                               description="MLLP over TLS port (-1 = off).")
    dicom_tls_port: int = Field(default=2762, ge=-1, le=65535,
                                description="DICOM over TLS port (-1 = off).")
    tls_only: bool = Field(
        default=False,
        description="Serve MLLP and DICOM over TLS only: the plaintext ports are not opened "
        "(needs MWLB_TLS_CERT_FILE; pair with MWLB_TLS_REQUIRE_CLIENT_CERT).",
    )
    dicom_max_associations: int = Field(
        default=64, ge=1,
        description="DICOM associations open at once for any peer; beyond it A-ASSOCIATE-RJ "
        "transient 'local limit exceeded'.",
    )
    dicom_reserved_associations: int = Field(
        default=8, ge=0,
        description="Extra associations only for calling AE titles whose allow-list entry "
        "names hosts or a certificate subject.",
    )
    dicom_max_associations_per_ip: int = Field(
        default=16, ge=0,
        description="Open DICOM connections allowed per client IP address; more are closed "
        "at once (0 = no cap).",
    )
    dicom_acse_timeout: float = Field(
        default=10.0, gt=0,
        description="ARTIM: seconds a DICOM connection may take for its TLS handshake and "
        "A-ASSOCIATE-RQ (and the peer for an A-RELEASE-RP).",
    )
    dicom_network_timeout: float = Field(
        default=60.0, gt=0,
        description="Seconds an association may stay silent before it is aborted.",
    )
    dicom_idle_timeout: float = Field(
        default=120.0, ge=0,
        description="Seconds an association may go without a request other than C-ECHO "
        "before it is aborted (0 = no limit).",
    )
    dicom_fast_path: bool = Field(
        default=True,
        description="C-FIND pending responses framed and written beneath pynetdicom "
        "(broker.dicom.fastpath); false = pynetdicom's public API only (slower, same "
        "responses), for a pynetdicom upgrade that breaks the fast path.",
    )
    dicom_allowed_calling: list[AllowedAE] = Field(
        default=[],
        description="DICOM peers allowed to associate (JSON list of {ae_title, hosts, "
        "certificate_subject}); empty = any (see allow_open_access).",
    )
    ups_event_destinations: Annotated[list[EventDestination], NoDecode] = Field(
        default=[],
        description="UPS subscribers the broker sends N-EVENT-REPORTs to (PS3.4 CC.2.4): "
        "AE=host:port,AE2=host:port (or a JSON list of {ae_title, host, port}). A DIMSE "
        "subscription for another Receiving AE is refused with 0xC308.",
    )
    hl7_allowed_senders: list[AllowedSender] = Field(
        default=[],
        description="HL7 senders allowed (JSON list of {sending_application, "
        "sending_facility, hosts}); empty = any (see allow_open_access).",
    )
    allow_open_access: bool = Field(
        default=False,
        description="Start in distributed mode with empty allow-lists (open to anyone). The "
        "embedded quick start is open without it.",
    )
    timezone: str = Field(
        default="",
        description="IANA zone worklist times are given in (empty: the host's local zone).",
    )
    mappings_dir: Path = Field(
        default_factory=default_mappings_dir,
        description="Directory of site mapping profiles (YAML), used with the packaged "
        "`default` profile (a site file named default replaces it). Default: ./mappings "
        "when it exists, else the packaged profiles alone.",
    )
    mappings_watch: bool = Field(
        default=False,
        description="Deploy the mappings directory when its files change while `serve` "
        "runs and they validate (user `file watch`); a change that does not validate is "
        "logged and never deployed. Off: editing the files changes nothing until "
        "`mwl-broker mapping deploy`.",
    )
    ack_mode: AckMode = Field(
        default=AckMode.APPLICATION, description="application | store (see README)."
    )
    application_ack_timeout: float = Field(
        default=10.0,
        description="Application ACK mode: seconds to wait for processing before answering "
        "AA on the durable store alone (the result then shows in the message store). In "
        "embedded mode only a message left to the processor waits (one applied in the "
        "commit that stores it is answered with that commit).",
    )
    worklist_max_results: int = Field(
        default=5000, description="Cap on C-FIND pending responses per query (0 = no cap)."
    )
    worklist_statuses: list[str] = Field(
        default=["SCHEDULED", "ARRIVED", "READY"],
        description="SPS statuses listed when the query does not give SPS Status.",
    )
    hl7_sending_application: str = Field(
        default="MWL_BROKER", description="MSH-3 of the messages the broker sends."
    )
    hl7_sending_facility: str = Field(default="", description="MSH-4 of outbound messages.")
    outbound_destinations: list[Destination] = Field(
        default=[],
        description="EHR endpoints for order status (JSON list in the environment; "
        "[[outbound_destinations]] tables in TOML).",
    )
    outbound_ack_timeout: float = Field(
        default=10.0, description="Seconds to wait for the EHR's ACK before retrying."
    )
    outbound_retry_max_seconds: float = Field(
        default=300.0, description="Cap on the exponential back-off between resends."
    )
    storage_mode: StorageMode = Field(
        default=StorageMode.DISCARD, description="discard | keep | forward (C-STORE files)."
    )
    storage_dir: Path = Field(
        default=Path("var/instances"), description="Where kept and spooled instances go."
    )
    forward_ae_title: str = Field(default="", description="PACS AE title (storage_mode forward).")
    forward_host: str = Field(default="", description="PACS host (storage_mode forward).")
    forward_port: int = Field(default=104, description="PACS port (storage_mode forward).")
    forward_max_attempts: int = Field(
        default=10, description="C-STORE forward attempts before an instance is failed."
    )
    reconcile_window_hours: float = Field(
        default=12.0,
        description="Performed work is matched by patient + modality to steps scheduled "
        "within this many hours of it (and candidates are searched in it).",
    )
    http_host: str = Field(default="0.0.0.0", description="Address the web console binds.")
    http_port: int = Field(
        default=8080, description="Web console and JSON API port (0 = ephemeral, -1 = off)."
    )
    admin_user: str = Field(
        default="",
        description="Console user that `serve` and `web` create at start with role admin "
        "and the password in admin_password_file, when no user of that name exists (an "
        "existing one is left as it is, its password too). Empty: none.",
    )
    admin_password_file: Path | None = Field(
        default=None,
        description="File holding admin_user's first password (a Docker secret, e.g. "
        "/run/secrets/mwlb_admin_password), read only when that user is created.",
    )
    session_idle_minutes: float = Field(
        default=30.0, description="Console sessions end after this long without a request."
    )
    http_trusted_origins: list[str] = Field(
        default=[],
        description="Extra origins (https://console.example.org) whose state-changing "
        "console requests are accepted, for a reverse proxy that rewrites the Host header. "
        "The console's own origin (its Host header) is always accepted.",
    )
    password_min_length: int = Field(
        default=12, ge=8, le=64,
        description="Shortest password a console user may be given (NIST SP 800-63B: 8 at "
        "least).",
    )
    login_delay_after_failures: int = Field(
        default=5, ge=1,
        description="Failed logins in a row for one account after which each further "
        "attempt must wait 1, 2, 4 ... seconds (attempts during the wait are refused).",
    )
    login_lockout_failures: int = Field(
        default=10, ge=0,
        description="Failed logins in a row that lock the account for login_lockout_minutes "
        "(0 = never lock).",
    )
    login_lockout_minutes: float = Field(
        default=15.0, gt=0,
        description="How long a lockout lasts; failures older than this are forgotten.",
    )
    login_address_delay_after_failures: int = Field(
        default=20, ge=1,
        description="Failed logins from one client address (any account) after which its "
        "attempts wait 1, 2, 4 ... seconds.",
    )
    login_address_lockout_failures: int = Field(
        default=50, ge=0,
        description="Failed logins from one client address that lock that address out for "
        "login_lockout_minutes (0 = never).",
    )
    log_format: str = Field(
        default="text", pattern="^(text|json)$", description="text | json (one object a line)."
    )
    audit_syslog_url: str = Field(
        default="",
        description="IHE ATNA audit export: udp://, tcp:// or tls://host:port (empty = audit "
        "table only).",
    )
    audit_syslog_ca_file: Path | None = Field(
        default=None, description="CA bundle that the tls:// audit receiver is checked against."
    )
    retention_days: float = Field(
        default=0.0,
        description="Prune processed/rejected messages, worklist query records, DICOM "
        "request records and sent outbound messages older than this (0 = keep all).",
    )
    sweep_grace: float = Field(
        default=30.0,
        description="Seconds a committed message may wait for its task before the sweeper "
        "dispatches it again.",
    )
    failpoint: str = Field(
        default="",
        description="Durability tests only: 'crash-after-commit:N' ends the process abruptly "
        "after the N-th stored message is committed, before its task is published.",
        json_schema_extra={"test_only": True},
    )
    sweep_interval: float = Field(
        default=15.0,
        description="Seconds between sweeps that re-dispatch unfinished work (lost task, "
        "outbound retry due, work queued by the CLI).",
    )
    hl7_versions: list[str] = Field(
        default=list(HL7_VERSIONS),
        description="MSH-12 versions accepted (JSON list in the environment); the default, "
        "2.1 to 2.8.2, is every version the broker reads, and a list may only narrow it. "
        "Others get AR 203.",
    )
    hl7_max_segments: int = Field(
        default=2000, ge=1, description="Segments allowed in an inbound message; more: AR 100."
    )
    hl7_max_repetitions: int = Field(
        default=1000, ge=1,
        description="Repetitions allowed in one field of an inbound message; more: AE 102 "
        "naming the field.",
    )
    hl7_max_components: int = Field(
        default=100, ge=1,
        description="Components allowed in one repetition (and sub-components in one "
        "component) of an inbound message; more: AE 102 naming the field.",
    )
    accept_unknown_hl7_version: bool = Field(
        default=False,
        description="Accept any MSH-12 (outside hl7_versions, or unknown: read with the "
        "current rules and a warning) instead of AR 203.",
    )

    @field_validator("hl7_versions")
    @classmethod
    def _known_versions(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in HL7_VERSIONS]
        if unknown:
            raise ValueError(f"unknown HL7 version(s) {', '.join(unknown)}: choose from "
                             f"{', '.join(HL7_VERSIONS)} (accept_unknown_hl7_version "
                             "accepts any)")
        if not value:
            raise ValueError("at least one HL7 version must be accepted")
        return value

    @field_validator("ups_event_destinations", mode="before")
    @classmethod
    def _event_destinations(cls, value: Any) -> Any:
        return parse_event_destinations(value)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if value:
            try:
                ZoneInfo(value)
            except (ValueError, ZoneInfoNotFoundError):
                raise ValueError(f"no IANA time zone {value!r} (e.g. Europe/Berlin; empty "
                                 "for the host's zone)") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        try:
            driver = make_url(value).drivername
        except ArgumentError:
            driver = ""
        if driver not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
            raise ValueError("give sqlite:///path/to/file.db or postgresql+psycopg://user:"
                             "password@host/database (the drivers the broker installs)")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)

    @property
    def embedded(self) -> bool:
        """True when tasks run in-process (no Celery broker configured)."""
        return not self.celery_broker_url


def user_settings() -> dict[str, FieldInfo]:
    """The settings a deployment sets: all but those only tests use (marked
    ``test_only``), which ``serve --help`` and the README leave out."""
    return {name: field for name, field in Settings.model_fields.items()
            if not (isinstance(field.json_schema_extra, dict)
                    and field.json_schema_extra.get("test_only"))}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings: overrides > ``MWLB_*`` environment > TOML file > defaults.

    Environment variables beat the file, so a deployment can pin one value without
    editing the file. Unknown keys in the file are an error naming the key.
    """
    file_values: dict[str, Any] = {}
    if config_file is not None:
        with config_file.open("rb") as fh:
            file_values = tomllib.load(fh)
        unknown = sorted(set(file_values) - set(Settings.model_fields))
        if unknown:
            raise ValueError(f"{config_file}: unknown setting(s): {', '.join(unknown)}")
    env_only = Settings(**overrides)  # env + overrides, to learn which fields they set
    explicit = env_only.model_fields_set
    merged = {k: v for k, v in file_values.items() if k not in explicit}
    merged.update({k: getattr(env_only, k) for k in explicit})
    return Settings(**merged)
