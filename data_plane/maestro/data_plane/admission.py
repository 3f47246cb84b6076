"""Per-deployment admission: the LiteLLM config's `rpm`, `tpm` and `max_parallel_requests`.

(Skeleton: admits everything. Issue 16's admission work fills it in.)
"""

from __future__ import annotations

from maestro.routing.spec import DeploymentSpec


class Ticket:
    """An admitted attempt; `release` once it ends, with the tokens it used."""

    __slots__ = ()

    def release(self, tokens: int) -> None:
        """The attempt ended having used `tokens` (prompt and completion)."""


_TICKET = Ticket()


class Admission:
    def enter(self, deployment: DeploymentSpec, estimated_tokens: int) -> Ticket | None:
        """A ticket if the deployment takes one more attempt now (of about `estimated_tokens`
        tokens), None if one of its limits is reached."""
        return _TICKET

    def retry_after_s(self, deployment: DeploymentSpec) -> float:
        """When the deployment is likely to take an attempt again, in seconds."""
        return 1.0
