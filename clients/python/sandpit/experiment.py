"""An experiment in the AI register, and what can be done with it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Union

from ._proto.sandpit.v1 import register_pb2
from ._units import TTL, to_datetime
from .errors import NotFound, SandpitError
from .models import Approval, Assessment, ExperimentOutcome, ExperimentStatus, Risk

if TYPE_CHECKING:
    from .client import Client, When
    from .sandbox import Sandbox

__all__ = ["Experiment"]


@dataclass(eq=False)
class Experiment:
    """A register entry, as the daemon last described it, bound to the client that fetched it.

    ``required_functions`` are the functions that must sign off before it is
    approved (from the host policy for its classification) and
    ``pending_functions`` those that have not yet. ``senior_responsible_owner``,
    ``phase``, ``function`` (the public-sector function it serves),
    ``region`` and ``transparency`` (other ATRS fields by the standard's
    name) are its transparency fields; ``what_worked``, ``what_did_not`` and
    ``artefacts`` its lessons beyond the ``lessons_learnt`` summary.
    """

    id: str
    title: str
    team: str
    owner: str
    purpose: str
    classification: str
    status: ExperimentStatus
    ai_tools: List[str]
    models: List[str]
    datasets: List[str]
    risks: List[Risk]
    approvals: List[Approval]
    outcome: ExperimentOutcome
    lessons_learnt: str
    created_at: Optional[datetime]
    planned_end: Optional[datetime]
    closed_at: Optional[datetime]
    closed_by: str
    closed_by_team: str
    required_functions: List[str]
    pending_functions: List[str]
    assessments: List[Assessment]
    senior_responsible_owner: str
    phase: str
    function: str
    region: str
    transparency: Dict[str, str]
    what_worked: str
    what_did_not: str
    artefacts: List[str]
    raw: Any = field(default=None, repr=False)
    _client: Optional["Client"] = field(default=None, repr=False)

    @classmethod
    def from_proto(cls, m: register_pb2.Experiment, client: Optional["Client"] = None) -> "Experiment":
        return cls(
            id=m.id,
            title=m.title,
            team=m.team,
            owner=m.owner,
            purpose=m.purpose,
            classification=m.classification,
            status=ExperimentStatus.from_proto(m.status, register_pb2.ExperimentStatus),
            ai_tools=list(m.ai_tools),
            models=list(m.models),
            datasets=list(m.datasets),
            risks=[Risk.from_proto(r) for r in m.risks],
            approvals=[Approval.from_proto(a) for a in m.approvals],
            outcome=ExperimentOutcome.from_proto(m.outcome, register_pb2.ExperimentOutcome),
            lessons_learnt=m.lessons_learnt,
            created_at=to_datetime(m, "created_at"),
            planned_end=to_datetime(m, "planned_end"),
            closed_at=to_datetime(m, "closed_at"),
            closed_by=m.closed_by,
            closed_by_team=m.closed_by_team,
            required_functions=list(m.required_functions),
            pending_functions=list(m.pending_functions),
            assessments=[Assessment.from_proto(a) for a in m.assessments],
            senior_responsible_owner=m.senior_responsible_owner,
            phase=m.phase,
            function=m.function,
            region=m.region,
            transparency=dict(sorted(m.transparency.items())),
            what_worked=m.what_worked,
            what_did_not=m.what_did_not,
            artefacts=list(m.artefacts),
            raw=m,
            _client=client,
        )

    def __eq__(self, other: object) -> bool:
        """Equal when the daemon described both the same way."""
        return isinstance(other, Experiment) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(("experiment", self.id))

    @property
    def client(self) -> "Client":
        if self._client is None:
            raise SandpitError("this Experiment is not bound to a Client", code="LOCAL")
        return self._client

    def _update(self, fresh: "Experiment") -> "Experiment":
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))
        return self

    def refresh(self) -> "Experiment":
        return self._update(self.client.experiment(self.id))

    def approve(self, conditions: str = "", function: str = "") -> "Experiment":
        """An approver's sign-off (never on their own team's experiment), for
        ``function`` where its classification needs sign-offs by function
        (empty: the one function the approver holds among those pending)."""
        return self._update(self.client.approve(self.id, conditions, function))

    def reject(self, conditions: str = "", function: str = "") -> "Experiment":
        """An approver's rejection (any required function's wins); tears down the experiment's sandboxes."""
        return self._update(self.client.reject(self.id, conditions, function))

    def close(
        self,
        outcome: Union[ExperimentOutcome, str],
        lessons: str,
        what_worked: str = "",
        what_did_not: str = "",
        artefacts: Iterable[str] = (),
    ) -> "Experiment":
        """Records the outcome and lessons learnt; tears down its sandboxes (approvers)."""
        return self._update(
            self.client.close_experiment(self.id, outcome, lessons, what_worked, what_did_not, artefacts)
        )

    def risk(self, id: str) -> Risk:
        """Its risk ``id`` (r1, r2, ...) as last described; ``NotFound`` if it has none such."""
        for r in self.risks:
            if r.id == id:
                return r
        has = ", ".join(r.id for r in self.risks) or "none"
        raise NotFound(f"experiment '{self.id}' has no risk '{id}' (has: {has})")

    def add_risk(
        self, description: str, likelihood: str, impact: str, mitigation: str = "", owner: str = "", reason: str = ""
    ) -> "Experiment":
        """Records a new risk (open; its first review falls due by its impact)."""
        return self._update(
            self.client.add_risk(self.id, description, likelihood, impact, mitigation=mitigation, owner=owner,
                                 reason=reason)  # fmt: skip
        )

    def update_risk(
        self,
        risk_id: Union[str, Risk],
        reason: str,
        status: Optional[str] = None,
        likelihood: Optional[str] = None,
        impact: Optional[str] = None,
        mitigation: Optional[str] = None,
        owner: Optional[str] = None,
    ) -> "Experiment":
        """Changes a risk (each field left None stays as it is); also counts as its review."""
        return self._update(
            self.client.update_risk(self.id, risk_id, reason, status=status, likelihood=likelihood, impact=impact,
                                    mitigation=mitigation, owner=owner)  # fmt: skip
        )

    def review_risk(self, risk_id: Union[str, Risk], reason: str) -> "Experiment":
        """Reviews a risk, changing nothing: its next review falls due again."""
        return self._update(self.client.review_risk(self.id, risk_id, reason))

    def record_assessment(
        self, kind: str, status: str, reference: str = "", date: Optional["When"] = None
    ) -> "Experiment":
        """Records an impact assessment, replacing the one of the same kind."""
        return self._update(self.client.record_assessment(self.id, kind, status, reference, date))

    def update_transparency(
        self,
        senior_responsible_owner: Optional[str] = None,
        phase: Optional[str] = None,
        function: Optional[str] = None,
        region: Optional[str] = None,
        fields: Optional[Mapping[str, Optional[str]]] = None,
    ) -> "Experiment":
        """Sets its transparency fields (None: unchanged; ``""``: cleared); see :meth:`Client.update_transparency`."""
        return self._update(
            self.client.update_transparency(self.id, senior_responsible_owner=senior_responsible_owner, phase=phase,
                                            function=function, region=region, fields=fields)  # fmt: skip
        )

    def create(
        self,
        profile: str,
        classification: Optional[str] = None,
        ttl: Optional[TTL] = None,
        **kwargs: Any,
    ) -> "Sandbox":
        """A sandbox for this experiment (classification defaults to the experiment's)."""
        return self.client.create(
            experiment=self.id, profile=profile, classification=classification or self.classification, ttl=ttl,
            **kwargs,
        )  # fmt: skip

    def sandboxes(self, all: bool = False) -> "List[Sandbox]":
        """Its sandboxes (``all``: ended ones too)."""
        return self.client.sandboxes(all=all, experiment=self.id)

