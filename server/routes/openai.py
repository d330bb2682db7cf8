"""The OpenAI-compatible endpoints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from cellar.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from cellar.responses import ResponsesRequest
from cellar.server.auth import OPEN, Principal, require_key
from cellar.server.responses import Responses
from cellar.server.service import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    EMBEDDINGS_PATH,
    RESPONSES_PATH,
    CompletionService,
)

router = APIRouter(dependencies=[Depends(require_key)])


def _service(request: Request) -> CompletionService:
    service: CompletionService = request.app.state.completions
    return service


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    service = _service(request)
    created = int(request.app.state.started_at)
    principal: Principal = getattr(request.state, "principal", OPEN)
    data = [
        _card(name, created, parent)
        for name, parent in service.supervisor.served()
        if principal.models is None or name in principal.models
    ]
    return {"object": "list", "data": data}


def _card(name: str, created: int, parent: str | None) -> dict[str, Any]:
    """A model's entry; an adapter's names its base model as `parent` (as vLLM's do)."""
    card: dict[str, Any] = {"id": name, "object": "model", "created": created, "owned_by": "cellar"}
    if parent is not None:
        card["parent"] = parent
    return card


@router.get("/v1/models/{model:path}")
async def get_model(model: str, request: Request) -> dict[str, Any]:
    service = _service(request)
    principal: Principal = getattr(request.state, "principal", OPEN)
    principal.check_model(model)
    base = service.supervisor.get(model).resolved.spec.name
    created = int(request.app.state.started_at)
    return _card(model, created, None if base == model else base)


@router.post(CHAT_PATH)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return await _service(request).complete(request, CHAT_PATH, body)


@router.post(COMPLETIONS_PATH)
async def completions(body: CompletionRequest, request: Request) -> Response:
    return await _service(request).complete(request, COMPLETIONS_PATH, body)


@router.post(EMBEDDINGS_PATH)
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    return await _service(request).embed(request, body)


def _responses(request: Request) -> Responses:
    responses: Responses = request.app.state.responses
    return responses


@router.post(RESPONSES_PATH)
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    return await _responses(request).create(request, body)


@router.get(RESPONSES_PATH + "/{response_id}")
async def get_response(response_id: str, request: Request) -> dict[str, Any]:
    return _responses(request).get(request, response_id)


@router.delete(RESPONSES_PATH + "/{response_id}")
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    return _responses(request).delete(request, response_id)
