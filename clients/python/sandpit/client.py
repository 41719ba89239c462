"""The client: one channel to a Sandpit daemon, and every call the protos offer."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from types import TracebackType
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Type, Union

import grpc

from ._discovery import PathOrPem, Settings, discover
from ._proto.sandpit.v1 import audit_pb2, profile_pb2, register_pb2, sandbox_pb2
from ._rpc import Rpc, Stream
from ._units import TTL, Size, duration_proto, parse_size, timestamp_proto
from .errors import InvalidArgument
from .experiment import Experiment
from .models import (
    AuditEvent,
    AuditVerification,
    Checkpoint,
    ExperimentOutcome,
    ExperimentStatus,
    PoolStatus,
    Profile,
    ProfileError,
    ProfileReload,
    ProfileValidation,
    PullProgress,
    Risk,
)
from .sandbox import Sandbox, SandboxEvent

__all__ = ["Client", "ActiveExperiment", "ActiveSandbox"]

ExperimentRef = Union[str, Experiment]
When = Union[datetime, date, str]


def _id(ref: Union[str, Experiment, Sandbox, Risk]) -> str:
    return ref if isinstance(ref, str) else ref.id


def _unchanged_or(what: str, value: Optional[str]) -> str:
    """A risk field for UpdateRisk: None is sent empty (unchanged). An empty
    string would say the same, not clear it, so it is refused."""
    if value is None:
        return ""
    if not value.strip():
        raise InvalidArgument(f"{what}: empty; leave it None to keep it as it is")
    return value


def _set_or_clear(value: Optional[str]) -> str:
    """A transparency field for UpdateTransparency: None unchanged (sent empty), "" cleared (sent as "-")."""
    if value is None:
        return ""
    return value if value.strip() else "-"


_EXPORT_KINDS = {
    "register": audit_pb2.EXPORT_KIND_REGISTER,
    "sandboxes": audit_pb2.EXPORT_KIND_ACTIVE_SANDBOXES,
    "active-sandboxes": audit_pb2.EXPORT_KIND_ACTIVE_SANDBOXES,
    "atrs": audit_pb2.EXPORT_KIND_ATRS,
    "lessons": audit_pb2.EXPORT_KIND_LESSONS,
}
_EXPORT_FORMATS = {
    "json": audit_pb2.EXPORT_FORMAT_JSON,
    "csv": audit_pb2.EXPORT_FORMAT_CSV,
    "markdown": audit_pb2.EXPORT_FORMAT_MARKDOWN,
    "md": audit_pb2.EXPORT_FORMAT_MARKDOWN,
    "html": audit_pb2.EXPORT_FORMAT_HTML,
}


class Client:
    """A connection to a Sandpit daemon.

    With no arguments it finds a local daemon as the ``sandpit`` CLI does:
    ``SANDPIT_ADDR`` / ``SANDPIT_TOKEN``, else the address and token the
    daemon wrote to its data directory (``SANDPIT_DATA_DIR``, default
    ``$XDG_DATA_HOME/sandpit`` or ``~/.local/share/sandpit``). For an
    ``https://`` daemon give ``ca_cert`` (or ``SANDPIT_CA_CERT``), and
    ``cert``/``key`` (``SANDPIT_CERT``/``SANDPIT_KEY``) for mutual TLS; each is
    a path or PEM bytes.

    Args:
        addr: ``http://HOST:PORT`` or ``https://HOST:PORT``.
        token: the bearer token.
        data_dir: where a local daemon wrote ``sandpitd.addr`` and ``local-token``.
        timeout: seconds each unary call may take (None: no limit; creates may
            wait for an image to build).
        tls_server_name: the name to check the daemon's certificate against,
            when it is not the address's host (e.g. ``localhost``).
        options: extra gRPC channel options.

    Use it as a context manager, or call :meth:`close`, to close the channel.
    """

    def __init__(
        self,
        addr: Optional[str] = None,
        token: Optional[str] = None,
        *,
        data_dir: Union[str, "os.PathLike[str]", None] = None,
        ca_cert: Optional[PathOrPem] = None,
        cert: Optional[PathOrPem] = None,
        key: Optional[PathOrPem] = None,
        timeout: Optional[float] = None,
        tls_server_name: Optional[str] = None,
        options: Sequence[Any] = (),
    ) -> None:
        self.settings: Settings = discover(addr, token, data_dir=data_dir, ca_cert=ca_cert, cert=cert, key=key)
        opts = list(options)
        if self.settings.secure:
            creds = grpc.ssl_channel_credentials(
                root_certificates=self.settings.ca_cert,
                private_key=self.settings.key,
                certificate_chain=self.settings.cert,
            )
            if tls_server_name:
                opts.append(("grpc.ssl_target_name_override", tls_server_name))
            channel = grpc.secure_channel(self.settings.target, creds, options=opts)
        else:
            channel = grpc.insecure_channel(self.settings.target, options=opts)
        metadata = [("authorization", f"Bearer {self.settings.token}")] if self.settings.token else []
        self._rpc = Rpc(channel, metadata, timeout)

    @property
    def addr(self) -> str:
        return self.settings.addr

    def close(self) -> None:
        """Closes the channel; calls still running end with ``Cancelled``."""
        self._rpc.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:  # fmt: skip
        self.close()

    def __repr__(self) -> str:
        return f"Client(addr={self.settings.addr!r})"

    # ================================================================== register

    def register(
        self,
        title: str,
        purpose: str,
        classification: str,
        *,
        ai_tools: Iterable[str] = (),
        models: Iterable[str] = (),
        datasets: Iterable[str] = (),
        risks: Iterable[Union[Risk, str]] = (),
        planned_end: Optional[When] = None,
        senior_responsible_owner: str = "",
        phase: str = "",
        function: str = "",
        region: str = "",
    ) -> Experiment:
        """Adds an experiment to the AI register (requesters); it starts ``proposed``.

        ``risks`` are :class:`Risk` or the CLI's
        ``"description;likelihood;impact;mitigation;owner"``; ``planned_end`` a
        date, datetime or ``YYYY-MM-DD``. ``senior_responsible_owner`` (a role
        title), ``phase``, ``function`` (the public-sector function it serves,
        e.g. ``"Economic affairs"``) and ``region`` are ATRS transparency
        fields; :meth:`update_transparency` changes them later.
        """
        req = register_pb2.RegisterExperimentRequest(
            title=title,
            purpose=purpose,
            classification=classification,
            ai_tools=list(ai_tools),
            models=list(models),
            datasets=list(datasets),
            risks=[Risk.parse(r).to_proto() for r in risks],
            senior_responsible_owner=senior_responsible_owner,
            phase=phase,
            function=function,
            region=region,
        )
        if planned_end is not None:
            req.planned_end.CopyFrom(timestamp_proto(planned_end))
        return self._experiment(self._rpc.unary(self._rpc.register.RegisterExperiment, req))

    def experiment(self, id: ExperimentRef) -> Experiment:
        """One register entry (another team's is ``NotFound`` to requesters)."""
        req = register_pb2.GetExperimentRequest(id=_id(id))
        return self._experiment(self._rpc.unary(self._rpc.register.GetExperiment, req))

    def experiments(
        self, *, team: Optional[str] = None, status: Union[ExperimentStatus, str, None] = None
    ) -> List[Experiment]:
        """Register entries the caller may see, optionally of one team or status."""
        req = register_pb2.ListExperimentsRequest(
            team=team or "", status=ExperimentStatus.parse(status).proto_name() if status is not None else None
        )
        answer = self._rpc.unary(self._rpc.register.ListExperiments, req)
        return [self._experiment(e) for e in answer.experiments]

    def approve(self, id: ExperimentRef, conditions: str = "", function: str = "") -> Experiment:
        """Signs off another team's experiment (approvers).

        Where the host policy lists functions that must sign off its
        classification (``Experiment.required_functions``), this approval
        counts for ``function`` (e.g. ``"data-protection"``), which the
        approver must hold; empty: the one function the approver holds among
        those still to sign. The experiment is approved once every required
        function has; a second sign-off for the same function is
        ``FailedPrecondition`` and changes nothing.
        """
        req = register_pb2.DecideExperimentRequest(id=_id(id), conditions=conditions, function=function)
        return self._experiment(self._rpc.unary(self._rpc.register.ApproveExperiment, req))

    def reject(self, id: ExperimentRef, conditions: str = "", function: str = "") -> Experiment:
        """Rejects another team's experiment and tears down its sandboxes (approvers).
        Any required function's rejection rejects it; ``function`` as for :meth:`approve`."""
        req = register_pb2.DecideExperimentRequest(id=_id(id), conditions=conditions, function=function)
        return self._experiment(self._rpc.unary(self._rpc.register.RejectExperiment, req))

    def close_experiment(
        self,
        id: ExperimentRef,
        outcome: Union[ExperimentOutcome, str],
        lessons: str,
        what_worked: str = "",
        what_did_not: str = "",
        artefacts: Iterable[str] = (),
    ) -> Experiment:
        """Closes an experiment with its outcome (succeeded, failed or abandoned) and
        lessons learnt, tearing down its sandboxes (approvers).

        ``lessons`` is the summary (required); ``what_worked``, ``what_did_not``
        and ``artefacts`` (reusable repositories, notebooks, documents) go to
        the lessons export with it.
        """
        o = ExperimentOutcome.parse(outcome)
        if o is ExperimentOutcome.UNSPECIFIED:
            raise InvalidArgument("outcome: use succeeded, failed or abandoned")
        if isinstance(artefacts, str):
            raise InvalidArgument("artefacts: a list of strings, not one string")
        req = register_pb2.CloseExperimentRequest(
            id=_id(id),
            outcome=o.proto_name(),
            lessons_learnt=lessons,
            what_worked=what_worked,
            what_did_not=what_did_not,
            artefacts=list(artefacts),
        )
        return self._experiment(self._rpc.unary(self._rpc.register.CloseExperiment, req))

    def add_risk(
        self,
        experiment: ExperimentRef,
        description: str,
        likelihood: str,
        impact: str,
        mitigation: str = "",
        owner: str = "",
        reason: str = "",
    ) -> Experiment:
        """Records a new risk of an experiment: open, ``id`` r1, r2, ... in order,
        its first review due after the host's cadence for its ``impact``.
        ``likelihood`` and ``impact``: low, medium or high (the experiment's
        team's requesters, and approvers)."""
        risk = Risk(description, likelihood, impact, mitigation, owner).to_proto()
        req = register_pb2.AddRiskRequest(experiment=_id(experiment), risk=risk, reason=reason)
        return self._experiment(self._rpc.unary(self._rpc.register.AddRisk, req))

    def update_risk(
        self,
        experiment: ExperimentRef,
        risk_id: Union[str, Risk],
        reason: str,
        status: Optional[str] = None,
        likelihood: Optional[str] = None,
        impact: Optional[str] = None,
        mitigation: Optional[str] = None,
        owner: Optional[str] = None,
    ) -> Experiment:
        """Changes a risk; every call is also its review. ``reason`` (required)
        is the review's finding; each field left None stays as it is
        (``status``: open, mitigated, accepted or closed). Who, when, what
        changed and why go on the risk's ``history``, and its next review
        falls due by its (new) impact; a closed risk has none (the
        experiment's team's requesters, and approvers)."""
        req = register_pb2.UpdateRiskRequest(
            experiment=_id(experiment),
            risk_id=_id(risk_id),
            reason=reason,
            status=_unchanged_or("status", status),
            likelihood=_unchanged_or("likelihood", likelihood),
            impact=_unchanged_or("impact", impact),
            mitigation=_unchanged_or("mitigation", mitigation),
            owner=_unchanged_or("owner", owner),
        )
        return self._experiment(self._rpc.unary(self._rpc.register.UpdateRisk, req))

    def review_risk(self, experiment: ExperimentRef, risk_id: Union[str, Risk], reason: str) -> Experiment:
        """Reviews a risk, changing nothing: recorded as ``"reviewed"`` with
        ``reason``, and its next review falls due again (which lifts a
        ``risk-review-overdue`` refusal)."""
        return self.update_risk(experiment, risk_id, reason)

    def record_assessment(
        self,
        experiment: ExperimentRef,
        kind: str,
        status: str,
        reference: str = "",
        date: Optional[When] = None,
    ) -> Experiment:
        """Records an impact assessment, replacing the one of the same kind
        (the experiment's team's requesters, and approvers).

        Args:
            kind: ``dpia``, ``equality-impact`` or ``security-risk``.
            status: ``not-started``, ``in-progress``, ``completed`` (needs a
                ``reference``) or ``not-required``.
            reference: where it is kept (a document reference or URL).
            date: when it was completed or last changed (a datetime, date or
                ``YYYY-MM-DD``); None: now.
        """
        req = register_pb2.RecordAssessmentRequest(
            experiment=_id(experiment), kind=kind, status=status, reference=reference
        )
        if date is not None:
            req.date.CopyFrom(timestamp_proto(date))
        return self._experiment(self._rpc.unary(self._rpc.register.RecordAssessment, req))

    def update_transparency(
        self,
        experiment: ExperimentRef,
        senior_responsible_owner: Optional[str] = None,
        phase: Optional[str] = None,
        function: Optional[str] = None,
        region: Optional[str] = None,
        fields: Optional[Mapping[str, Optional[str]]] = None,
    ) -> Experiment:
        """Sets the transparency fields the register keeps for the experiment's
        ATRS record (the experiment's team's requesters, and approvers).

        Each of ``senior_responsible_owner``, ``phase``, ``function`` and
        ``region`` left None stays as it is; ``""`` clears it. ``fields`` sets
        other ATRS fields by the standard's name (e.g. ``contact_email``); a
        value of None or ``""`` removes one. A field the register fills
        itself (e.g. ``title``), or one the standard lacks, is
        ``InvalidArgument``.
        """
        transparency: Dict[str, str] = {}
        for name, value in (fields or {}).items():
            if not isinstance(name, str) or not name.strip():
                raise InvalidArgument(f"fields: {name!r} is not an ATRS field name")
            if value is not None and not isinstance(value, str):
                raise InvalidArgument(f"fields[{name!r}]: {value!r} is not text")
            transparency[name.strip()] = value or ""
        req = register_pb2.UpdateTransparencyRequest(
            experiment=_id(experiment),
            senior_responsible_owner=_set_or_clear(senior_responsible_owner),
            phase=_set_or_clear(phase),
            function=_set_or_clear(function),
            region=_set_or_clear(region),
            transparency=transparency,
        )
        return self._experiment(self._rpc.unary(self._rpc.register.UpdateTransparency, req))

    def _experiment(self, m: register_pb2.Experiment) -> Experiment:
        return Experiment.from_proto(m, self)

    # ================================================================== sandboxes

    def create(
        self,
        experiment: ExperimentRef,
        profile: str,
        classification: str,
        ttl: Optional[TTL] = None,
        *,
        image: Optional[str] = None,
        datasets: Iterable[str] = (),
        cpus: Optional[float] = None,
        memory: Optional[Size] = None,
        pull: bool = True,
        on_pull: Optional[Callable[[PullProgress], None]] = None,
    ) -> Sandbox:
        """Creates a sandbox and waits until it runs (requesters).

        As ``sandpit create`` does, the create is first admitted and its image
        made present (PullImage with the create attached: a refused create
        pulls nothing, and the pull is on record with the experiment); each
        progress message goes to ``on_pull``. ``pull=False`` skips that step.

        Args:
            experiment: the experiment (or its id) the sandbox belongs to.
            profile: the profile's name.
            classification: OFFICIAL, OFFICIAL-SENSITIVE, SECRET or TOP-SECRET.
            ttl: time to live from now (``"10m"``, ``"1h30m"``, seconds, a
                timedelta); None: the profile's default.
            image: one the profile allows; None: its first.
            datasets: datasets to mount read-only at ``/data/NAME``.
            cpus, memory: less than the profile gives (``memory`` in bytes or
                ``"512MiB"``); None: the profile's.
        """
        req = sandbox_pb2.CreateSandboxRequest(
            experiment=_id(experiment),
            profile=profile,
            classification=classification,
            image=image or "",
            datasets=list(datasets),
            cpus=float(cpus) if cpus is not None else 0.0,
            memory_bytes=parse_size(memory) if memory is not None else 0,
        )
        if ttl is not None:
            req.ttl.CopyFrom(duration_proto(ttl))
        if pull:
            self._pull(req, on_pull)
        return self._sandbox(self._rpc.unary(self._rpc.sandboxes.CreateSandbox, req))

    def _pull(self, create: sandbox_pb2.CreateSandboxRequest, on_pull: Optional[Callable[[PullProgress], None]]) -> None:
        req = sandbox_pb2.PullImageRequest(profile=create.profile, image=create.image, create=create)
        for p in self._rpc.stream(self._rpc.sandboxes.PullImage, req, PullProgress.from_proto):
            if on_pull is not None:
                on_pull(p)

    def pull_image(
        self, profile: str, image: Optional[str] = None, on_progress: Optional[Callable[[PullProgress], None]] = None
    ) -> None:
        """Makes an image the profile allows present on the daemon's engine (requesters)."""
        req = sandbox_pb2.PullImageRequest(profile=profile, image=image or "")
        for p in self._rpc.stream(self._rpc.sandboxes.PullImage, req, PullProgress.from_proto):
            if on_progress is not None:
                on_progress(p)

    def sandbox(self, id: Union[str, Sandbox]) -> Sandbox:
        """One sandbox (another team's is ``NotFound`` to requesters)."""
        req = sandbox_pb2.GetSandboxRequest(id=_id(id))
        return self._sandbox(self._rpc.unary(self._rpc.sandboxes.GetSandbox, req))

    def sandboxes(self, *, all: bool = False, experiment: Optional[ExperimentRef] = None) -> List[Sandbox]:
        """The caller's visible sandboxes; ``all`` adds ended ones."""
        req = sandbox_pb2.ListSandboxesRequest(
            include_ended=all, experiment=_id(experiment) if experiment is not None else ""
        )
        return [self._sandbox(s) for s in self._rpc.unary(self._rpc.sandboxes.ListSandboxes, req).sandboxes]

    def extend(self, id: Union[str, Sandbox], ttl: TTL) -> Sandbox:
        """Sets a sandbox's new ttl, counted from now (requesters)."""
        return self._sandbox(self._extend(_id(id), ttl))

    def delete(self, id: Union[str, Sandbox]) -> Sandbox:
        """Kills and removes a sandbox; idempotent."""
        return self._sandbox(self._delete(_id(id)))

    def watch(self, *, id: Optional[str] = None, experiment: Optional[ExperimentRef] = None) -> Stream[SandboxEvent]:
        """Lifecycle events as they happen (iterate; ``cancel()`` or ``with`` to stop)."""
        req = sandbox_pb2.WatchSandboxesRequest(id=id or "", experiment=_id(experiment) if experiment else "")
        return self._rpc.stream(self._rpc.sandboxes.WatchSandboxes, req, lambda m: SandboxEvent.from_proto(m, self))

    def _extend(self, id: str, ttl: TTL) -> sandbox_pb2.Sandbox:
        req = sandbox_pb2.ExtendSandboxRequest(id=id, ttl=duration_proto(ttl))
        return self._rpc.unary(self._rpc.sandboxes.ExtendSandbox, req)

    def _delete(self, id: str) -> sandbox_pb2.Sandbox:
        return self._rpc.unary(self._rpc.sandboxes.DeleteSandbox, sandbox_pb2.DeleteSandboxRequest(id=id))

    def _sandbox(self, m: sandbox_pb2.Sandbox) -> Sandbox:
        return Sandbox.from_proto(m, self)

    # ================================================================== audit

    def iter_audit_log(
        self,
        *,
        since: Optional[When] = None,
        until: Optional[When] = None,
        actor: Optional[str] = None,
        experiment: Optional[ExperimentRef] = None,
        sandbox: Optional[Union[str, Sandbox]] = None,
        action: Optional[str] = None,
        page_size: int = 1000,
    ) -> Iterator[AuditEvent]:
        """Audit records matching the filters, oldest first, fetched a page at a time (auditors)."""
        req = audit_pb2.QueryAuditLogRequest(
            actor=actor or "",
            experiment=_id(experiment) if experiment is not None else "",
            sandbox=_id(sandbox) if sandbox is not None else "",
            action=action or "",
            page_size=page_size,
        )
        if since is not None:
            req.since.CopyFrom(timestamp_proto(since))
        if until is not None:
            req.until.CopyFrom(timestamp_proto(until))
        while True:
            page = self._rpc.unary(self._rpc.audit.QueryAuditLog, req)
            for e in page.events:
                yield AuditEvent.from_proto(e)
            if not page.next_page_token:
                return
            req.page_token = page.next_page_token

    def audit_log(
        self,
        *,
        since: Optional[When] = None,
        until: Optional[When] = None,
        actor: Optional[str] = None,
        experiment: Optional[ExperimentRef] = None,
        sandbox: Optional[Union[str, Sandbox]] = None,
        action: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> List[AuditEvent]:
        """As :meth:`iter_audit_log`, as a list of at most ``limit`` records (auditors)."""
        out: List[AuditEvent] = []
        events = self.iter_audit_log(since=since, until=until, actor=actor, experiment=experiment, sandbox=sandbox,
                                     action=action, page_size=min(limit, 1000) if limit else 1000)  # fmt: skip
        if limit is not None and limit <= 0:
            return out
        for e in events:
            out.append(e)
            if limit is not None and len(out) >= limit:
                break
        return out

    def watch_audit_log(self) -> Stream[AuditEvent]:
        """Audit records as they are written (auditors)."""
        return self._rpc.stream(self._rpc.audit.WatchAuditLog, audit_pb2.WatchAuditLogRequest(), AuditEvent.from_proto)

    def verify_audit_log(self, checkpoint: Optional[str] = None, verifier_key: Optional[str] = None) -> AuditVerification:
        """Recomputes the hash chain (auditors). With a signed checkpoint (the
        note text), the chain must also hold it; its signature is checked
        against ``verifier_key`` (note vkey format), else the daemon's own."""
        req = audit_pb2.VerifyAuditLogRequest(checkpoint=checkpoint or "", verifier_key=verifier_key or "")
        return AuditVerification.from_proto(self._rpc.unary(self._rpc.audit.VerifyAuditLog, req))

    def checkpoint(self) -> Checkpoint:
        """A signed checkpoint of the audit chain as it is now (auditors)."""
        return Checkpoint.from_proto(self._rpc.unary(self._rpc.audit.GetCheckpoint, audit_pb2.GetCheckpointRequest()))

    def export(
        self,
        kind: str = "register",
        format: Optional[str] = None,
        experiment: Optional[ExperimentRef] = None,
        since: Optional[When] = None,
        until: Optional[When] = None,
        include_above_official: bool = False,
    ) -> bytes:
        """An export, as bytes (auditors).

        Args:
            kind: ``"register"``, ``"sandboxes"`` (the active ones), ``"atrs"``
                (each experiment as an Algorithmic Transparency Recording
                Standard record, with ``missing_required`` naming the required
                fields still empty) or ``"lessons"`` (lessons learnt of closed
                experiments, as a publishable document).
            format: ``"json"`` or ``"csv"`` (default json) for register,
                sandboxes and atrs; ``"markdown"`` or ``"html"`` (default
                markdown) for lessons.
            experiment: only this experiment (atrs, lessons).
            since, until: lessons: only experiments closed in ``[since, until)``.
            include_above_official: lessons: also experiments classified above
                OFFICIAL, which are otherwise left out (asking is audited).
        """
        if kind not in _EXPORT_KINDS:
            raise InvalidArgument(f"kind {kind!r}: use register, sandboxes, atrs or lessons")
        if format is None:
            format = "markdown" if kind == "lessons" else "json"
        if format not in _EXPORT_FORMATS:
            raise InvalidArgument(f"format {format!r}: use json, csv, markdown or html")
        req = audit_pb2.ExportRequest(
            kind=_EXPORT_KINDS[kind],
            format=_EXPORT_FORMATS[format],
            experiment=_id(experiment) if experiment is not None else "",
            include_above_official=include_above_official,
        )
        if since is not None:
            req.since.CopyFrom(timestamp_proto(since))
        if until is not None:
            req.until.CopyFrom(timestamp_proto(until))
        return b"".join(self._rpc.stream(self._rpc.audit.Export, req, lambda c: bytes(c.data)))

    def active_experiments(self) -> List["ActiveExperiment"]:
        """Experiments that can have sandboxes, with their live sandboxes and time left (auditors, approvers)."""
        answer = self._rpc.unary(self._rpc.audit.ListActiveExperiments, audit_pb2.ListActiveExperimentsRequest())
        return [
            ActiveExperiment(
                experiment=self._experiment(a.experiment),
                sandboxes=[
                    ActiveSandbox(
                        sandbox=self._sandbox(s.sandbox),
                        time_left=(s.time_left.ToTimedelta() if s.HasField("time_left") else None),
                    )
                    for s in a.sandboxes
                ],
            )
            for a in answer.experiments
        ]

    # ================================================================== profiles

    def profiles(self) -> List[Profile]:
        """The profiles in force."""
        answer = self._rpc.unary(self._rpc.profiles.ListProfiles, profile_pb2.ListProfilesRequest())
        return [Profile.from_proto(p) for p in answer.profiles]

    def profile(self, name: str) -> Profile:
        return Profile.from_proto(self._rpc.unary(self._rpc.profiles.GetProfile, profile_pb2.GetProfileRequest(name=name)))

    def validate_profile(self, content: str, file_name: str = "profile.toml") -> ProfileValidation:
        """Checks a profile file's content before it is installed (operators)."""
        req = profile_pb2.ValidateProfileRequest(file_name=file_name, content=content)
        r = self._rpc.unary(self._rpc.profiles.ValidateProfile, req)
        return ProfileValidation(
            valid=r.valid,
            errors=[ProfileError.from_proto(e) for e in r.errors],
            profile=Profile.from_proto(r.profile) if r.HasField("profile") else None,
        )

    def reload_profiles(self) -> ProfileReload:
        """Re-reads the profiles directory, as SIGHUP does (operators)."""
        r = self._rpc.unary(self._rpc.profiles.ReloadProfiles, profile_pb2.ReloadProfilesRequest())
        return ProfileReload(applied=r.applied, loaded=list(r.loaded), errors=[ProfileError.from_proto(e) for e in r.errors])

    def pools(self) -> List[PoolStatus]:
        """Warm pools: target, ready, claims and misses (operators)."""
        r = self._rpc.unary(self._rpc.profiles.ListPools, profile_pb2.ListPoolsRequest())
        return [PoolStatus(p.profile, p.target, p.warm, p.claims, p.misses) for p in r.pools]


@dataclass
class ActiveSandbox:
    """A live sandbox of an active experiment, and its time left."""

    sandbox: Sandbox
    time_left: Optional[timedelta]


@dataclass
class ActiveExperiment:
    """An experiment that can have sandboxes (proposed or approved), with its live sandboxes."""

    experiment: Experiment
    sandboxes: List[ActiveSandbox]
