"""The scopes each Maestro RPC accepts: a key needs one of them, checked before the handler runs.

One table, so a reviewer reads the whole access model in one place. A method missing from it is
refused (PERMISSION_DENIED), so a new RPC cannot ship unguarded: `tests/test_tenant_attacks.py`
checks that every method the server reflects is listed. Resource-level rules stay with the
domain: the global layer and the global kill switch need `operator`, reading another key's
metadata needs `admin`.
"""

from __future__ import annotations

from maestro.core.auth import (
    ADMIN,
    ALL_SCOPES,
    APPROVER,
    DATA_PLANE,
    INFERENCE,
    OPERATOR,
    Principal,
    require_scope,
)

ANY = ALL_SCOPES
_ADMIN = frozenset({ADMIN, OPERATOR})
_INFERENCE = frozenset({INFERENCE})
_READ_RUNS = frozenset({INFERENCE, APPROVER, ADMIN})
_APPROVE = frozenset({APPROVER})
_DATA_PLANE = frozenset({DATA_PLANE})
_READ_CONFIG = frozenset({ADMIN, OPERATOR, INFERENCE})

_BY_SERVICE: dict[str, dict[str, frozenset[str]]] = {
    "maestro.v1.ProjectService": {
        "GetProject": ANY,
        "ListProjects": ANY,  # a data plane learns a caller's project this way
        "CreateApiKey": _ADMIN,
        "GetApiKey": ANY,  # its own key for any scope; another key needs admin (service)
        "ListApiKeys": _ADMIN,
        "DeleteApiKey": _ADMIN,
    },
    "maestro.v1.RouteService": {
        "Choose": _INFERENCE,
        "StreamChoose": _INFERENCE,
        "ExplainRoute": _READ_CONFIG,
        "GetConfig": _READ_CONFIG,
        "ApplyConfig": _ADMIN,  # the global layer also needs operator (service)
        "ListConfigRevisions": _READ_CONFIG,
        "WatchConfig": _DATA_PLANE,
        "ReportObservations": _DATA_PLANE,
        "GetDeploymentSignals": _READ_CONFIG,
        "ListDeploymentSignals": _READ_CONFIG,
    },
    "maestro.v1.InferenceService": {
        "CreateChatCompletion": _INFERENCE,
        "StreamChatCompletion": _INFERENCE,
        "ListModels": _INFERENCE,
    },
    "maestro.v1.GraphService": {
        "GetRecipe": _READ_RUNS,
        "ListRecipes": _READ_RUNS,
        "CreateRecipe": _ADMIN,
        "UpdateRecipe": _ADMIN,
        "DeleteRecipe": _ADMIN,
        "ExportRecipeDiagram": _READ_RUNS,
        "PreviewRunCost": _INFERENCE,
        "CreateRun": _INFERENCE,
        "GetRun": _READ_RUNS,
        "ListRuns": _READ_RUNS,
        "ListRunEvents": _READ_RUNS,
        "StreamRunEvents": _READ_RUNS,
        "CancelRun": frozenset({INFERENCE, ADMIN}),
        "PauseRun": frozenset({INFERENCE, ADMIN}),
        "ResumeRun": frozenset({INFERENCE, ADMIN}),
        "GetGate": _READ_RUNS,
        "ListGates": _READ_RUNS,
        "SubmitGateDecision": _APPROVE,
        "InteractRun": _APPROVE,
        "GetKillSwitch": ANY,
        "SetKillSwitch": _ADMIN,  # the global switch also needs operator (service)
    },
    "maestro.v1.EvalService": {
        # Datasets and suites are what a gate measures against: changing them is an admin's
        # act. Running a suite is what CI does with an inference key.
        "CreateEvalSuite": _ADMIN,
        "GetEvalSuite": _READ_RUNS,
        "ListEvalSuites": _READ_RUNS,
        "UpdateEvalSuite": _ADMIN,
        "DeleteEvalSuite": _ADMIN,
        "CreateDataset": _ADMIN,
        "GetDataset": _READ_RUNS,
        "ListDatasets": _READ_RUNS,
        "CreateEvalRun": frozenset({INFERENCE, ADMIN}),
        "GetEvalRun": _READ_RUNS,
        "ListEvalRuns": _READ_RUNS,
        "GetScorecard": _READ_RUNS,
        "CancelEvalRun": frozenset({INFERENCE, ADMIN}),
        "WatchEvalRun": _READ_RUNS,
        "CompareScorecards": _READ_RUNS,
        "EvaluateGate": _ADMIN,
    },
    "maestro.v1.RolloutService": {
        # Versions are pushed by CI; moving traffic is an admin's act (or an approver's, where
        # dual control asks for one), and aborting is open to any admin in an emergency.
        "CreateArtifactVersion": _ADMIN,
        "GetArtifactVersion": _READ_RUNS,
        "ListArtifactVersions": _READ_RUNS,
        "CreateRollout": _ADMIN,
        "GetRollout": _READ_RUNS,
        "ListRollouts": _READ_RUNS,
        "GetRolloutAuditEvent": _READ_RUNS,
        "ListRolloutAuditEvents": _READ_RUNS,
        "PauseRollout": _ADMIN,
        "ResumeRollout": _ADMIN,
        "PromoteRollout": _ADMIN,  # skips analyses: not an approver's (ApproveRollout is)
        "AbortRollout": _ADMIN,
        "RetryRollout": _ADMIN,
        "ApproveRollout": _APPROVE,  # dual control: approvers, never the rollout's creator
        "WatchRollout": _READ_RUNS,
    },
}

METHOD_SCOPES: dict[str, frozenset[str]] = {
    f"/{service}/{method}": scopes
    for service, methods in _BY_SERVICE.items()
    for method, scopes in methods.items()
}


def scopes_for(method: str) -> frozenset[str]:
    """The scopes `/package.Service/Method` accepts; empty (nothing) for an unlisted method."""
    found = METHOD_SCOPES.get(method)
    if found is None:
        service = method.lstrip("/").partition("/")[0]
        found = METHOD_SCOPES.get(f"/{service}/*", frozenset())
    return found


def check_scope(principal: Principal, accepted: frozenset[str]) -> None:
    """PERMISSION_DENIED unless the key has one of `accepted` (nothing: never)."""
    require_scope(principal, *accepted)
