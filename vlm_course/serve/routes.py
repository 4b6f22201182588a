"""The server's three endpoints; each checks the API key first, before reading anything else."""

from fastapi import Request
from fastapi.responses import StreamingResponse

from . import completions


def add_routes(app, state) -> None:
    """Register /health, /v1/models and /v1/chat/completions on `app`, serving `state` (an app.ServerState)."""

    @app.get("/health")
    async def health(request: Request):
        batcher = state.batcher
        status = "loading" if batcher is None else "draining" if state.draining.is_set() else "ok"
        answer = {"status": status, "model": state.model_name()}
        if state.has_key(request):  # counters only for whoever may use the API (they tell traffic and load)
            answer["batcher"] = dict(batcher.stats, max_batch_size=batcher.max_batch_size) if batcher else None
            answer["images"] = state.policy.describe() if state.policy else None
        return answer

    @app.get("/v1/models")
    async def models(request: Request):
        state.authorize(request)
        return {"object": "list", "data": [{"id": state.model_name(), "object": "model", "created": state.created,
                                            "owned_by": "vlm-course"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        state.authorize(request)  # before the body is read or parsed
        state.accepting()
        body = await completions.read_request(request, state.settings)
        plan = completions.plan(state.vlm, body, state.settings, state.model_name())
        await completions.check_prompt_length(state.vlm, body, plan)
        conversation = await completions.to_conversation(body, state.policy, state.settings.max_images)
        state.accepting()
        completion = completions.Completion(state.batcher, body, plan, conversation, state.model_name(), request,
                                            state.stopping)
        first = await completion.first()
        if not body.stream:
            return await completion.json(first)
        return StreamingResponse(completion.sse(first), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
