"""The OpenAI chat-completions request, checked and turned into an engine job's inputs.

Everything a client can get wrong is found here, before the request is queued: a bad request must
fail alone with a 4xx, never inside a batch next to other clients' requests.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kvl_core.errors import KvlError


class ApiError(Exception):
    """An OpenAI-style error reply: HTTP status, message, error type."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


class ImageURL(BaseModel):
    url: str
    detail: Optional[str] = None


class Part(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "image_url"]
    text: Optional[str] = None
    image_url: Optional[Union[ImageURL, str]] = None


class Msg(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[Part], None] = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    # Unknown fields (logprobs, user, ...) are ignored, as vLLM does, so stock clients work unchanged.
    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[Msg] = Field(min_length=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = 1
    # vLLM's extensions, plus the paper's thinking budget (Figure 13)
    top_k: Optional[int] = Field(None, ge=-1)
    repetition_penalty: Optional[float] = Field(None, gt=0)
    thinking_budget: Optional[int] = Field(None, ge=0)


def parse_request(data: Any) -> ChatRequest:
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ApiError(400, f"{where}: {first['msg']}", param=where) from None
    if req.n != 1:
        raise ApiError(400, "n: only n=1 is supported", param="n")
    stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    if len(stops) > 8 or any(not s for s in stops):
        raise ApiError(400, "stop: at most 8 non-empty strings", param="stop")
    return req


def sampling_options(req: ChatRequest) -> dict[str, Any]:
    """Engine options for everything the request sets; unset ones fall back to the checkpoint's defaults."""
    opts: dict[str, Any] = {}
    if req.temperature is not None:
        opts["temperature"] = req.temperature
    if req.top_p is not None:
        opts["top_p"] = req.top_p
    if req.top_k is not None:
        opts["top_k"] = max(0, req.top_k)  # vLLM spells "off" as -1
    if req.repetition_penalty is not None:
        opts["repetition_penalty"] = req.repetition_penalty
    if req.seed is not None:
        opts["seed"] = req.seed
    if req.stop:
        opts["stop_strings"] = tuple([req.stop] if isinstance(req.stop, str) else req.stop)
    if req.thinking_budget is not None:
        opts["thinking_budget"] = req.thinking_budget
    return opts


def to_messages(req: ChatRequest, *, max_images: int, max_pixels: int, allow_local_files: bool) -> list[dict]:
    """OpenAI messages -> kvl messages with every image decoded (PIL), so that undecodable or oversized
    images are this request's 400 rather than a failed batch."""
    from kvl_core.processor.image import load_image

    out, n_img = [], 0
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role
        if m.content is None:
            raise ApiError(400, f"messages.{i}.content: missing", param=f"messages.{i}.content")
        if isinstance(m.content, str):
            out.append({"role": role, "content": m.content})
            continue
        parts = []
        for j, p in enumerate(m.content):
            where = f"messages.{i}.content.{j}"
            if p.type == "text":
                if p.text is None:
                    raise ApiError(400, f"{where}: a text part needs 'text'", param=where)
                parts.append({"type": "text", "text": p.text})
                continue
            if p.image_url is None:
                raise ApiError(400, f"{where}: an image_url part needs 'image_url'", param=where)
            n_img += 1
            if n_img > max_images:
                raise ApiError(400, f"too many images: at most {max_images} per request", param=where)
            url = p.image_url if isinstance(p.image_url, str) else p.image_url.url
            label = f"{where} (image {n_img})"
            if url.startswith("file://"):
                label = f"{where} ({url[len('file://'):]})"
                if not allow_local_files:
                    raise ApiError(400, f"{where}: file:// URLs are refused (start the server with "
                                   "--allow-local-files)", param=where)
            elif not url.startswith("data:"):
                raise ApiError(400, f"{where}: only data: URLs (base64) are accepted; this server fetches nothing",
                               param=where)
            try:
                img = load_image(url, name=label, max_pixels=max_pixels)
            except KvlError as e:
                raise ApiError(400, str(e), param=where) from None
            parts.append({"type": "image", "image": img})
        out.append({"role": role, "content": parts})
    return out


def count_prompt_tokens(processor: Any, messages: list[dict]) -> int:
    """Prompt length without patchifying: each image is planned (its token count is exact) and stood in
    for by a one-token 28x28 image while the text is tokenised."""
    from PIL import Image

    stand_in = Image.new("RGB", (28, 28))
    extra, swapped = 0, []
    for m in messages:
        c = m["content"]
        if isinstance(c, list):
            new = []
            for p in c:
                if p.get("type") == "image":
                    extra += processor.image_processor.plan(*p["image"].size).tokens - 1
                    p = {"type": "image", "image": stand_in}
                new.append(p)
            c = new
        swapped.append({**m, "content": c})
    try:
        return len(processor.encode(swapped).input_ids) + extra
    except KvlError as e:
        raise ApiError(400, str(e)) from None
