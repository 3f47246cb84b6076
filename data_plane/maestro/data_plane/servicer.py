"""gRPC face of the data plane: InferenceService."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from maestro.core.auth import current_principal
from maestro.core.rpc.metadata import objectives_header
from maestro.data_plane import convert
from maestro.data_plane.events import Delta, Done, Fallback, Routed
from maestro.data_plane.model_groups import list_model_groups
from maestro.data_plane.service import InferenceService, collect
from maestro.routing.decider import Decider
from maestro.v1 import common_pb2
from maestro.v1 import inference_service_pb2 as pb
from maestro.v1 import inference_service_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(self, service: InferenceService, routes: Decider) -> None:
        self._service = service
        self._routes = routes

    async def CreateChatCompletion(
        self, request: pb.CreateChatCompletionRequest, context: Context
    ) -> pb.CreateChatCompletionResponse:
        call = convert.call_input(request, objectives_header(context), context.time_remaining())
        call = self._service.resolve(current_principal(), call)
        completion = await collect(self._service.stream(current_principal(), call))
        done = completion.done
        message = common_pb2.ChatMessage(
            role=common_pb2.CHAT_ROLE_ASSISTANT, content=completion.text
        )
        for call_id, name, arguments in completion.tool_calls:
            message.tool_calls.add(id=call_id, name=name, arguments_json=arguments)
        response = pb.CreateChatCompletionResponse(
            completion_id=done.completion_id,
            message=message,
            finish_reason=convert.finish_reason_value(done.finish_reason),
            usage=common_pb2.Usage(
                prompt_tokens=done.prompt_tokens,
                completion_tokens=done.completion_tokens,
                total_tokens=done.prompt_tokens + done.completion_tokens,
            ),
            cost_usd=done.cost_usd,
            route=convert.routed_message(completion.routed),
            deployment=convert.deployment_ref(done.deployment) if done.deployment else None,
            fallbacks=[convert.fallback_message(f) for f in done.fallbacks],
            continued_after_failure=done.continued_after_failure,
            timings=convert.timings_message(done.timings),
            artifact_version=call.artifact_version,
        )
        if done.error is not None:
            response.error.CopyFrom(done.error.to_status())
        return response

    async def StreamChatCompletion(
        self, request: pb.StreamChatCompletionRequest, context: Context
    ) -> AsyncIterator[pb.StreamChatCompletionResponse]:
        call = convert.call_input(request, objectives_header(context), context.time_remaining())
        call = self._service.resolve(current_principal(), call)
        Response = pb.StreamChatCompletionResponse
        delta_message = convert.delta_message
        async with contextlib.aclosing(self._service.stream(current_principal(), call)) as events:
            async for event in events:
                if isinstance(event, Delta):
                    yield Response(delta=delta_message(event))
                elif isinstance(event, Routed):
                    yield Response(routed=convert.routed_message(event))
                elif isinstance(event, Fallback):
                    yield Response(fallback=convert.fallback_message(event))
                elif isinstance(event, Done):
                    yield Response(done=convert.done_message(event, call.artifact_version))

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        published = self._routes.published_for(current_principal(), request.parent)
        page = list_model_groups(
            published, request.parent, request.filter, request.page_size, request.page_token
        )
        return pb.ListModelsResponse(
            model_groups=[
                pb.ModelGroup(
                    name=g.name,
                    model=g.model,
                    aliases=g.aliases,
                    from_global_config=g.from_global_config,
                    deployments=[
                        pb.ModelDeployment(
                            deployment=convert.deployment_ref(d),
                            context_window_tokens=d.max_input_tokens or 0,
                            input_cost_per_1k_tokens_usd=(d.input_cost_per_token or 0.0) * 1000,
                            output_cost_per_1k_tokens_usd=(d.output_cost_per_token or 0.0) * 1000,
                            in_house=d.in_house,
                            jurisdiction=d.jurisdiction,
                            quality_score=d.quality,
                        )
                        for d in g.deployments
                    ],
                )
                for g in page.items
            ],
            next_page_token=page.next_page_token,
            snapshot_version=published.snapshot_version,
        )
