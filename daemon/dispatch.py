"""Sending results to destinations: C-STORE SCU (optionally TLS), a folder, or DICOMweb STOW-RS.

The :class:`Dispatcher` takes due deliveries from the job queue
(:meth:`SqliteJobQueue.claim_delivery`), sends the job's result files and
records the outcome. A failed attempt n (1-based) is retried after
:func:`backoff_s` seconds (exponential, capped); apscheduler fires the retry
at that time, and a periodic sweep also picks up deliveries that other
processes (the worker, ``contourd resend``) queued. After
``dispatch.max_attempts`` failed attempts the delivery, and so the job, is
``failed`` with every attempt's error kept in ``job_events``.

The same files are sent every time, so a resend carries the same SOP
Instance UIDs and a planning system never receives two different-looking
copies of one result.

Each file the peer acknowledges is recorded in the delivery's row at once,
before the association is released or anything else can fail; a sender that
dies after that point (SIGKILL, OOM) leaves the record, and the next attempt
skips the acknowledged files instead of sending them twice. Only a death in
the instant between the peer storing a file and its response reaching us can
still cause a second copy (same SOP Instance UID), which DICOM cannot avoid.

Speed: the SCU sets ``TCP_NODELAY`` on the association's socket (small PDUs
such as P-DATA headers and C-STORE responses are not held back by Nagle's
algorithm) and sends each file straight from disk in chunks
(pynetdicom's ``STORE_SEND_CHUNKED_DATASET``) instead of decoding and
re-encoding it.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path

import pydicom
from apscheduler.schedulers.background import BackgroundScheduler
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from contourd.errors import DispatchError, LeaseLostError
from daemon.config import DestinationConfig, DispatchConfig
from daemon.config_provider import provided
from daemon.job_queue import Delivery, DeliveryState, Job, SqliteJobQueue

log = logging.getLogger(__name__)

_FALLBACK_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
"""Explicit and implicit VR little endian, offered beside each file's own syntax."""


def backoff_s(failed_attempts: int, config: DispatchConfig) -> float:
    """Seconds to wait after the ``failed_attempts``-th failed attempt (>= 1)."""
    exponent = max(failed_attempts - 1, 0)
    return float(min(config.retry_initial_s * config.retry_factor**exponent, config.retry_max_s))


def _tls_context(dest: DestinationConfig) -> ssl.SSLContext | None:
    if dest.tls is None:
        return None
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(dest.tls.ca_file) if dest.tls.ca_file else None
    )
    ctx.check_hostname = dest.tls.check_hostname
    if dest.tls.cert_file is not None:
        ctx.load_cert_chain(
            str(dest.tls.cert_file), str(dest.tls.key_file) if dest.tls.key_file else None
        )
    return ctx


def _file_meta(path: Path) -> tuple[str, str, str]:
    """(SOP Class UID, SOP Instance UID, transfer syntax UID) of a DICOM file."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except (OSError, pydicom.errors.InvalidDicomError) as err:
        raise DispatchError(
            f"result file {path} cannot be read ({err}); it should be a DICOM file "
            f"written by the worker; run the job again"
        ) from err
    meta = ds.file_meta
    return (
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
    )


def send_cstore(
    files: Sequence[Path],
    dest: DestinationConfig,
    config: DispatchConfig,
    *,
    name: str = "destination",
    already_accepted: Collection[str] = (),
    on_accepted: Callable[[str], None] | None = None,
) -> list[str]:
    """Send ``files`` to a C-STORE SCP in one association.

    Files whose SOP Instance UID is in ``already_accepted`` are not sent
    again. ``on_accepted(sop_instance_uid)`` is called as soon as the peer
    acknowledges a file, before the next file or the release.

    Returns
    -------
    list of str
        The SOP Instance UIDs the peer has acknowledged (now or before), in
        file order.

    Raises
    ------
    DispatchError
        Association refused or aborted, peer unreachable, or a non-success
        C-STORE status (the message names the destination, file and status).
    """
    if dest.host is None or dest.port is None or dest.ae_title is None:
        raise DispatchError(f"destination {name!r} is not a C-STORE peer (no host/port/ae_title)")
    all_metas = [_file_meta(Path(f)) for f in files]
    todo = [(f, m) for f, m in zip(files, all_metas, strict=True) if m[1] not in already_accepted]
    if not todo:
        return [m[1] for m in all_metas]
    files = [f for f, _ in todo]
    metas = [m for _, m in todo]
    ae = AE(ae_title=config.calling_ae_title)
    ae.acse_timeout = config.connect_timeout_s
    ae.connection_timeout = config.connect_timeout_s
    ae.network_timeout = config.network_timeout_s
    ae.dimse_timeout = config.network_timeout_s
    ae.maximum_pdu_size = config.max_pdu_bytes
    # One presentation context per transfer syntax: a peer that would pick
    # implicit VR from a combined proposal still accepts the file's own syntax
    # in its own context, so the file goes out byte for byte.
    for sop_class, _uid, syntax in dict.fromkeys(metas):
        for ts in dict.fromkeys([syntax, *_FALLBACK_SYNTAXES]):
            ae.add_requested_context(sop_class, ts)
    tls = _tls_context(dest)
    where = f"{name!r} ({dest.ae_title}@{dest.host}:{dest.port})"
    _config.STORE_SEND_CHUNKED_DATASET = True
    assoc = ae.associate(
        dest.host,
        int(dest.port),
        ae_title=dest.ae_title,
        tls_args=(tls, dest.host) if tls is not None else None,
    )
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
        raise DispatchError(
            f"association to {where} {reason}; check that the peer is running and "
            f"accepts calling AE {config.calling_ae_title!r} and called AE {dest.ae_title!r}"
        )
    sent = [m[1] for m in all_metas if m[1] in already_accepted]
    try:
        sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
        for path, (sop_class, sop_uid, ts) in zip(files, metas, strict=True):
            if (sop_class, ts) in accepted:
                status = assoc.send_c_store(Path(path))
            elif any(cls == sop_class for cls, _ in accepted):
                # The peer took another uncompressed syntax: pynetdicom re-encodes.
                status = assoc.send_c_store(pydicom.dcmread(path))
            else:
                raise DispatchError(
                    f"{where} accepted no presentation context for {Path(path).name} "
                    f"(SOP class {sop_class}); configure the peer to accept it"
                )
            code = int(getattr(status, "Status", -1)) if status else -1
            if code == -1:
                raise DispatchError(
                    f"no C-STORE response from {where} for {Path(path).name} "
                    f"(connection lost or timed out after {config.network_timeout_s} s)"
                )
            if code != 0 and not (0xB000 <= code <= 0xBFFF):
                raise DispatchError(
                    f"{where} refused {Path(path).name} with status 0x{code:04X}; "
                    f"see the peer's log for the reason"
                )
            if on_accepted is not None:
                on_accepted(sop_uid)
            sent.append(sop_uid)
    finally:
        if assoc.is_established:
            assoc.release()
    return sent


def copy_to_folder(files: Sequence[Path], folder: Path) -> list[str]:
    """Write ``files`` into ``folder`` as ``<SOPInstanceUID>.dcm``, atomically.

    A resend overwrites the file of the same UID, so the folder never holds
    two copies of one result.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DispatchError(
            f"destination folder {folder} cannot be created ({err}); check the path and "
            f"that the contourd user may write there"
        ) from err
    uids: list[str] = []
    for path in files:
        _cls, sop_uid, _ts = _file_meta(Path(path))
        target = folder / f"{sop_uid}.dcm"
        tmp = folder / f".{sop_uid}.{uuid.uuid4().hex}.tmp"
        try:
            data = Path(path).read_bytes()
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise DispatchError(
                f"cannot write {target} ({err}); check free space and rights"
            ) from err
        uids.append(sop_uid)
    return uids


def send_stow(files: Sequence[Path], dest: DestinationConfig, config: DispatchConfig) -> list[str]:
    """POST ``files`` to ``{dest.stow_url}/studies`` (DICOMweb STOW-RS, dicomweb-client).

    Returns the SOP Instance UIDs the service stored. The same files carry the
    same UIDs on a resend.

    Raises
    ------
    DispatchError
        When the service cannot be reached, answers with an HTTP error, or
        lists any instance as failed.
    """
    import requests
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session, create_session_from_user_pass

    assert dest.stow_url is not None
    if dest.stow_username is not None and dest.stow_password_file is not None:
        try:
            password = Path(dest.stow_password_file).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise DispatchError(
                f"stow_password_file {dest.stow_password_file} cannot be read ({err}); "
                "check the path and that the contourd user may read it"
            ) from err
        session = create_session_from_user_pass(dest.stow_username, password)
    else:
        session = create_session()
    client = DICOMwebClient(url=dest.stow_url.rstrip("/"), session=session)
    client.set_http_retry_params(retry=False)
    datasets = [pydicom.dcmread(path) for path in files]
    try:
        answer = client.store_instances(datasets)
    except (requests.RequestException, OSError) as err:
        raise DispatchError(
            f"STOW-RS to {dest.stow_url}/studies failed: {err}; check the URL, the service "
            f"and the credentials"
        ) from err
    failed = answer.get("FailedSOPSequence") or []
    if failed:
        reasons = ", ".join(
            f"{item.get('ReferencedSOPInstanceUID', '?')} (reason {item.get('FailureReason', '?')})"
            for item in failed
        )
        raise DispatchError(f"STOW-RS to {dest.stow_url} refused {reasons}")
    return [str(ds.SOPInstanceUID) for ds in datasets]


def echo(dest: DestinationConfig, config: DispatchConfig, *, name: str = "destination") -> bool:
    """C-ECHO a C-STORE destination; True when it answered with success."""
    if dest.stow_url is not None:
        return True  # no STOW-RS "echo"; the first send says whether it works
    if dest.host is None or dest.port is None:
        return dest.folder is not None and Path(dest.folder).is_dir()
    ae = AE(ae_title=config.calling_ae_title)
    ae.acse_timeout = config.connect_timeout_s
    ae.connection_timeout = config.connect_timeout_s
    ae.add_requested_context(Verification)
    tls = _tls_context(dest)
    assoc = ae.associate(
        dest.host,
        int(dest.port),
        ae_title=dest.ae_title or "ANY-SCP",
        tls_args=(tls, dest.host) if tls is not None else None,
    )
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


DestinationsProvider = Callable[[], Mapping[str, DestinationConfig]]


class Dispatcher:
    """Sends due deliveries, retrying with exponential backoff.

    Parameters
    ----------
    queue
        The job queue (deliveries live there, so a restart resumes them).
    destinations
        Called before each send: the current named destinations (so a config
        reload takes effect without a restart).
    config
        Retry and network settings, or a provider of them called at each use
        (:mod:`daemon.config_provider`: a reloaded config applies to the next
        attempt; ``poll_interval_s`` is read once, at :meth:`start`).
    owner
        The lease owner name for deliveries this dispatcher takes.
    lease_s
        How long a delivery stays leased while it is being sent (default
        ``config.lease_s``).
    """

    def __init__(
        self,
        queue: SqliteJobQueue,
        destinations: DestinationsProvider,
        config: DispatchConfig | Callable[[], DispatchConfig],
        *,
        owner: str | None = None,
        lease_s: float | None = None,
    ) -> None:
        self.queue = queue
        self.destinations = destinations
        self._config = provided(config)
        self.owner = owner or f"dispatch-{socket.gethostname()}-{os.getpid()}"
        self.lease_s = self.config.lease_s if lease_s is None else lease_s
        self._scheduler: BackgroundScheduler | None = None
        self._drain_lock = threading.Lock()
        self._last_db_error: str | None = None
        self.on_sent: Callable[[Job, str, float], None] | None = None

    @property
    def config(self) -> DispatchConfig:
        """The dispatch settings in use now (asked of the provider)."""
        return self._config()

    # -- one attempt ------------------------------------------------------------
    def _send(self, job: Job, delivery: Delivery) -> list[str]:
        destination = delivery.destination
        dests = self.destinations()
        dest = dests.get(destination)
        if dest is None:
            raise DispatchError(
                f"job {job.id} is to be sent to {destination!r}, which is not in the "
                f"config's destinations ({', '.join(sorted(dests)) or 'none'}); add it or "
                f"resend with `contourd resend {job.id} --to NAME`"
            )
        files = [Path(f) for f in job.result_files]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DispatchError(
                f"job {job.id}'s result files are missing: {', '.join(missing)}; "
                f"run the series again with `contourd segment`"
            )
        if dest.folder is not None:
            return copy_to_folder(files, dest.folder)
        if dest.stow_url is not None:
            return send_stow(files, dest, self.config)
        if delivery.accepted_sop_instance_uids:
            log.warning(
                "job %s: %s already acknowledged %d file(s) before the previous sender "
                "stopped; they are not sent again",
                job.id,
                destination,
                len(delivery.accepted_sop_instance_uids),
            )
        return send_cstore(
            files,
            dest,
            self.config,
            name=destination,
            already_accepted=frozenset(delivery.accepted_sop_instance_uids),
            on_accepted=lambda uid: self.queue.record_acceptance(
                job.id, destination, self.owner, uid
            ),
        )

    def drain(self, *, job_id: int | None = None) -> int:
        """Send every delivery that is due now; returns how many attempts were made.

        With ``job_id``, only that job's deliveries are sent (others stay
        queued); used by the worker to send a fresh result at once.
        """
        attempts = 0
        with self._drain_lock:
            while True:
                claimed = self.queue.claim_delivery(self.owner, self.lease_s, job_id=job_id)
                if claimed is None:
                    return attempts
                job, delivery = claimed
                attempts += 1
                self._attempt(job, delivery)

    def _attempt(self, job: Job, delivery: Delivery) -> None:
        destination, attempt = delivery.destination, delivery.attempts
        started = time.monotonic()
        try:
            uids = self._send(job, delivery)
        except LeaseLostError as err:
            log.error("job %s: stopped sending to %s: %s", job.id, destination, err)
            return
        except DispatchError as err:
            self._failed(job, destination, attempt, str(err))
            return
        except Exception as err:  # boundary: one send; the error is kept on the job
            log.exception("job %s: unexpected error sending to %s", job.id, destination)
            self._failed(job, destination, attempt, f"{type(err).__name__}: {err}")
            return
        elapsed_s = time.monotonic() - started
        self.queue.finish_delivery(job.id, destination, self.owner, ok=True, sop_instance_uids=uids)
        log.info(
            "job %s: sent %d file(s) to %s in %.2f s (attempt %d)",
            job.id,
            len(uids),
            destination,
            elapsed_s,
            attempt,
        )
        if self.on_sent is not None:
            self.on_sent(job, destination, elapsed_s)

    def _failed(self, job: Job, destination: str, attempt: int, error: str) -> None:
        if attempt >= self.config.max_attempts:
            log.error(
                "job %s: sending to %s failed for good after %d attempts: %s",
                job.id,
                destination,
                attempt,
                error,
            )
            self.queue.finish_delivery(job.id, destination, self.owner, ok=False, error=error)
            return
        delay_s = backoff_s(attempt, self.config)
        retry_at = time.time() + delay_s
        log.warning(
            "job %s: sending to %s failed (attempt %d of %d), retry in %.1f s: %s",
            job.id,
            destination,
            attempt,
            self.config.max_attempts,
            delay_s,
            error,
        )
        self.queue.finish_delivery(
            job.id, destination, self.owner, ok=False, error=error, retry_at=retry_at
        )
        self._schedule_at(retry_at)

    # -- scheduling ----------------------------------------------------------------
    def _schedule_at(self, at_epoch_s: float) -> None:
        if self._scheduler is None or not self._scheduler.running:
            return
        self._scheduler.add_job(
            self._drain_quietly,
            "date",
            run_date=datetime.fromtimestamp(at_epoch_s + 0.01).astimezone(),
            misfire_grace_time=None,
        )

    def wake(self) -> None:
        """Look for due deliveries now (e.g. a dead sender's lease was just released)."""
        self._schedule_at(time.time())

    def _drain_quietly(self) -> None:
        try:
            self.drain()
        except sqlite3.OperationalError as err:
            # A full disk: say it once, not with a traceback at every sweep.
            if str(err) != self._last_db_error:
                log.error("dispatch sweep: job database not writable (%s); retrying", err)
            self._last_db_error = str(err)
            return
        except Exception:  # boundary: a scheduler tick must not kill the scheduler
            log.exception("dispatch sweep failed; it runs again at the next tick")
            return
        if self._last_db_error is not None:
            log.info("dispatch sweep: job database writable again")
            self._last_db_error = None

    def start(self) -> None:
        """Start the background sweeps (every ``poll_interval_s``) and due retries."""
        scheduler = BackgroundScheduler(timezone="UTC")
        scheduler.add_job(
            self._drain_quietly,
            "interval",
            seconds=self.config.poll_interval_s,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now().astimezone(),
        )
        scheduler.start()
        self._scheduler = scheduler
        due = self.queue.next_delivery_due_at()
        if due is not None:
            self._schedule_at(due)

    def stop(self, *, wait: bool = True) -> None:
        """Stop the sweeps; with ``wait`` a send in progress finishes first."""
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=wait)
        self._scheduler = None


def pending_deliveries(queue: SqliteJobQueue, job_id: int) -> list[str]:
    """Destinations of ``job_id`` that have not received the result yet."""
    return [d.destination for d in queue.deliveries(job_id) if d.state != DeliveryState.SENT]
