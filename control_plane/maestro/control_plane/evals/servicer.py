"""gRPC face of EvalService: convert requests, delegate to `service.EvalService`, convert back.

WatchEvalRun renders what `watch.watch_run` yields; nothing here holds a loop of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from maestro.control_plane.evals import convert
from maestro.control_plane.evals.service import EvalService
from maestro.control_plane.evals.watch import EvalHub, watch_run
from maestro.core.auth import current_principal
from maestro.core.errors import FieldViolation, InvalidArgument
from maestro.v1 import eval_service_pb2 as pb
from maestro.v1 import eval_service_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class EvalServicer(pb_grpc.EvalServiceServicer):
    def __init__(self, service: EvalService, hub: EvalHub, stopping: Any) -> None:
        self._service = service
        self._hub = hub
        self._stopping = stopping

    async def CreateEvalSuite(
        self, request: pb.CreateEvalSuiteRequest, context: Context
    ) -> pb.CreateEvalSuiteResponse:
        suite = await self._service.create_suite(
            current_principal(),
            request.parent,
            request.eval_suite_id,
            convert.new_suite(request.eval_suite),
            request.request_id,
            request.validate_only,
        )
        return pb.CreateEvalSuiteResponse(eval_suite=convert.suite_message(suite))

    async def GetEvalSuite(
        self, request: pb.GetEvalSuiteRequest, context: Context
    ) -> pb.GetEvalSuiteResponse:
        suite = await self._service.get_suite(current_principal(), request.name)
        return pb.GetEvalSuiteResponse(eval_suite=convert.suite_message(suite))

    async def ListEvalSuites(
        self, request: pb.ListEvalSuitesRequest, context: Context
    ) -> pb.ListEvalSuitesResponse:
        page = await self._service.list_suites(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListEvalSuitesResponse(
            eval_suites=[convert.suite_message(s) for s in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateEvalSuite(
        self, request: pb.UpdateEvalSuiteRequest, context: Context
    ) -> pb.UpdateEvalSuiteResponse:
        suite = await self._service.update_suite(
            current_principal(),
            request.eval_suite.name,
            convert.new_suite(request.eval_suite),
            set(request.update_mask.paths),
            request.eval_suite.etag,
            request.validate_only,
        )
        return pb.UpdateEvalSuiteResponse(eval_suite=convert.suite_message(suite))

    async def DeleteEvalSuite(
        self, request: pb.DeleteEvalSuiteRequest, context: Context
    ) -> pb.DeleteEvalSuiteResponse:
        await self._service.delete_suite(current_principal(), request.name, request.etag)
        return pb.DeleteEvalSuiteResponse()

    async def CreateDataset(
        self, request: pb.CreateDatasetRequest, context: Context
    ) -> pb.CreateDatasetResponse:
        if request.WhichOneof("content") == "blob_digest":
            raise InvalidArgument(
                [
                    FieldViolation(
                        "blob_digest",
                        "datasets from the blob store are not served yet; send the JSONL inline",
                    )
                ]
            )
        dataset = await self._service.create_dataset(
            current_principal(),
            request.parent,
            request.dataset_id,
            request.dataset.display_name,
            request.dataset.description,
            request.dataset.source_uri,
            request.jsonl,
            request.expected_sha256,
            request.request_id,
        )
        return pb.CreateDatasetResponse(dataset=convert.dataset_message(dataset))

    async def GetDataset(
        self, request: pb.GetDatasetRequest, context: Context
    ) -> pb.GetDatasetResponse:
        dataset = await self._service.get_dataset(current_principal(), request.name)
        return pb.GetDatasetResponse(dataset=convert.dataset_message(dataset))

    async def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: Context
    ) -> pb.ListDatasetsResponse:
        page = await self._service.list_datasets(
            current_principal(),
            request.parent,
            request.page_size,
            request.page_token,
            request.filter,
        )
        return pb.ListDatasetsResponse(
            datasets=[convert.dataset_message(d) for d in page.items],
            next_page_token=page.next_page_token,
        )

    async def CreateEvalRun(
        self, request: pb.CreateEvalRunRequest, context: Context
    ) -> pb.CreateEvalRunResponse:
        run = await self._service.create_run(
            current_principal(),
            request.parent,
            request.eval_run_id,
            convert.new_run(request.eval_run),
            request.request_id,
        )
        return pb.CreateEvalRunResponse(eval_run=convert.run_message(run))

    async def GetEvalRun(
        self, request: pb.GetEvalRunRequest, context: Context
    ) -> pb.GetEvalRunResponse:
        run = await self._service.get_run(current_principal(), request.name)
        return pb.GetEvalRunResponse(eval_run=convert.run_message(run))

    async def ListEvalRuns(
        self, request: pb.ListEvalRunsRequest, context: Context
    ) -> pb.ListEvalRunsResponse:
        page = await self._service.list_runs(
            current_principal(),
            request.parent,
            request.page_size,
            request.page_token,
            request.filter,
            request.order_by,
        )
        return pb.ListEvalRunsResponse(
            eval_runs=[convert.run_message(r) for r in page.items],
            next_page_token=page.next_page_token,
        )

    async def GetScorecard(
        self, request: pb.GetScorecardRequest, context: Context
    ) -> pb.GetScorecardResponse:
        card = await self._service.get_scorecard(current_principal(), request.name)
        return pb.GetScorecardResponse(scorecard=convert.scorecard_message(card))

    async def CancelEvalRun(
        self, request: pb.CancelEvalRunRequest, context: Context
    ) -> pb.CancelEvalRunResponse:
        run = await self._service.cancel_run(current_principal(), request.name, request.reason)
        return pb.CancelEvalRunResponse(eval_run=convert.run_message(run))

    async def WatchEvalRun(
        self, request: pb.WatchEvalRunRequest, context: Context
    ) -> AsyncIterator[pb.WatchEvalRunResponse]:
        if request.after_sequence < 0:
            raise InvalidArgument([FieldViolation("after_sequence", "must not be negative")])
        updates = watch_run(
            self._service,
            self._hub,
            current_principal(),
            request.name,
            request.after_sequence,
            self._stopping,
        )
        async with contextlib.aclosing(updates) as stream:
            async for update in stream:
                message = pb.WatchEvalRunResponse(
                    sequence=update.sequence,
                    eval_run=convert.run_message(update.run),
                    partial_metrics=[convert.score_message(s) for s in update.partial],
                    task_results=[convert.task_result_message(r) for r in update.results],
                )
                if update.scorecard is not None:
                    message.scorecard.CopyFrom(convert.scorecard_message(update.scorecard))
                yield message

    async def CompareScorecards(
        self, request: pb.CompareScorecardsRequest, context: Context
    ) -> pb.CompareScorecardsResponse:
        comparison = await self._service.compare(
            current_principal(), request.base_scorecard, request.candidate_scorecard
        )
        return convert.comparison_message(comparison)

    async def EvaluateGate(
        self, request: pb.EvaluateGateRequest, context: Context
    ) -> pb.EvaluateGateResponse:
        decision, checks = await self._service.evaluate_gate(
            current_principal(), convert.gate_request(request)
        )
        return convert.gate_response(decision, checks)
