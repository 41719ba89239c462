"""An experiment in the AI register, and what can be done with it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, List, Optional, Union

from ._proto.sandpit.v1 import register_pb2
from ._units import TTL, to_datetime
from .errors import SandpitError
from .models import Approval, ExperimentOutcome, ExperimentStatus, Risk

if TYPE_CHECKING:
    from .client import Client
    from .sandbox import Sandbox

__all__ = ["Experiment"]


@dataclass(eq=False)
class Experiment:
    """A register entry, as the daemon last described it, bound to the client that fetched it."""

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

    def approve(self, conditions: str = "") -> "Experiment":
        """An approver's approval (never on their own team's experiment)."""
        return self._update(self.client.approve(self.id, conditions))

    def reject(self, conditions: str = "") -> "Experiment":
        """An approver's rejection; tears down the experiment's sandboxes."""
        return self._update(self.client.reject(self.id, conditions))

    def close(self, outcome: Union[ExperimentOutcome, str], lessons: str) -> "Experiment":
        """Records the outcome and lessons learnt; tears down its sandboxes (approvers)."""
        return self._update(self.client.close_experiment(self.id, outcome, lessons))

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

