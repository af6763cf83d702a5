"""The HTTP API (FastAPI; OpenAPI docs at /docs) over a `JobService`. No Ray here."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Header, Path, Query, Request, Response, Security, UploadFile
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.auth import ApiKeys, AuthError
from serve.config import Limits
from serve.jobs import JOB_ID_PATTERN, GenerationParams, JobRecord, Progress, Status
from serve.requests import RequestError, Upload
from serve.service import JobConflict, JobNotFound, JobService, ServiceBusy

UPLOAD_FIELDS = ("image", "motion", "motion_json", "pose_video", "mask")
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
MAX_IDEMPOTENCY_KEY = 128
MAX_WAIT_S = 30.0


class JobView(BaseModel):
    """A job as clients see it."""

    id: str
    status: Status
    progress: Progress
    error: str | None
    attempt: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    generation_s: float | None
    params: GenerationParams

    @classmethod
    def of(cls, record: JobRecord) -> JobView:
        return cls.model_validate(record.model_dump(include=set(cls.model_fields)))


class GateMiddleware:
    """Before a route reads the body: checks the API key (401; sets `state["client"]` for the routes) and holds
    the body to `max_body_bytes` (413), refusing a larger Content-Length at once and counting the bytes of
    a body sent without one."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, max_body_bytes: int):
        self.app, self.keys, self.max_body_bytes = app, keys, max_body_bytes

    def _too_large(self, size: str) -> str:
        return f"body: {size} bytes; at most {self.max_body_bytes} are accepted"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        path = scope["path"].removeprefix(scope.get("root_path", "").rstrip("/"))
        if path not in PUBLIC_PATHS:
            try:
                scope.setdefault("state", {})["client"] = self.keys.client(headers.get("authorization"))
            except AuthError as err:
                refusal = JSONResponse({"detail": str(err)}, 401, headers={"WWW-Authenticate": "Bearer"})
                await refusal(scope, receive, send)
                return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await JSONResponse({"detail": self._too_large(length)}, 413)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise HTTPException(413, self._too_large(f"more than {self.max_body_bytes}"))
            return message

        await self.app(scope, counted, send)


def check_form(form: FormData, allowed: set[str], limits: Limits) -> None:
    """Refuse fields the endpoint does not know (422: a misspelt `numframes` would be ignored otherwise) and text
    fields over `limits.max_text_field_bytes` (413), naming the field."""
    for name, value in form.multi_items():
        if name not in allowed:
            raise RequestError(f"{name}: not a field of this endpoint; the fields are {', '.join(sorted(allowed))}")
        size = len(value.encode()) if isinstance(value, str) else 0
        if size > limits.max_text_field_bytes:
            raise RequestError(f"{name}: {size} bytes; at most {limits.max_text_field_bytes} are accepted", 413)


_bearer = HTTPBearer(auto_error=False, description="an API key (not needed when auth is off)")


def _client(request: Request, _: Annotated[object, Security(_bearer)]) -> str:
    """The client AuthMiddleware identified (the Security parameter documents the scheme in OpenAPI)."""
    return request.state.client


Client = Annotated[str, Depends(_client)]
JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="the id POST /v1/videos returned")]


def build_api(service: JobService, keys: ApiKeys, limits: Limits) -> FastAPI:
    """The FastAPI app: routes, auth, body limit (413) and error mapping."""
    app = FastAPI(
        title="humanim",
        summary="Human image animation: a reference image plus a motion and/or a pose video in, an MP4 out.",
    )
    app.add_middleware(GateMiddleware, keys=keys, max_body_bytes=limits.max_body_bytes)

    async def error_response(_: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, ServiceBusy):
            return JSONResponse({"detail": str(exc)}, 503, headers={"Retry-After": str(exc.retry_after_s)})
        status = exc.status_code if isinstance(exc, RequestError) else 404 if isinstance(exc, JobNotFound) else 409
        return JSONResponse({"detail": str(exc)}, status)

    for error in (RequestError, JobNotFound, JobConflict, ServiceBusy):
        app.add_exception_handler(error, error_response)

    @app.post(
        "/v1/videos", status_code=202, response_model=JobView,
        # text fields are held to max_text_field_bytes by check_form, which can name the field (Starlette cannot)
        form_limits={"max_part_size": limits.max_body_bytes, "max_files": 4, "max_fields": 16},
        responses={401: {}, 409: {}, 413: {}, 422: {}},
    )
    async def create_video(
        request: Request,
        response: Response,
        client: Client,
        image: Annotated[UploadFile, File(
            description="reference photo (PNG, JPEG or WebP; any size, EXIF orientation and transparency handled)"
        )],
        motion: Annotated[UploadFile | None, File(description="motion .npz (see DESIGN.md, 'Motion file')")] = None,
        motion_json: Annotated[str | None, Form(description="the motion as a JSON object, instead of the file")] = None,
        pose_video: Annotated[UploadFile | None, File(description="driving skeleton video")] = None,
        mask: Annotated[UploadFile | None, File(
            description="region mask for the image (grayscale PNG, JPEG or WebP): white is kept, black is blanked and "
            "described by the prompt (DynamiCtrl's region control)"
        )] = None,
        prompt: Annotated[str, Form()] = "",
        negative_prompt: Annotated[str, Form()] = "",
        num_frames: Annotated[int | None, Form(description="default: the longest the driving input allows")] = None,
        steps: Annotated[int | None, Form(description="denoising steps")] = None,
        guidance: Annotated[float | None, Form(description="classifier-free guidance scale (1 = off)")] = None,
        gamma: Annotated[float | None, Form(description="articulated-noise degradation in [0, 1]")] = None,
        seed: Annotated[int | None, Form(description="default: drawn by the server and recorded")] = None,
        articulated_noise: Annotated[bool | None, Form(
            description="default: on when a motion is given, unless the backbone config says its model was not "
            "trained on it")] = None,
        backbone: Annotated[str | None, Form(description="one of the served backbones")] = None,
        fit: Annotated[str | None, Form(description="crop (around the person, default), centre or pad")] = None,
        background: Annotated[str | None, Form(description="'r,g,b' or '#rrggbb': transparency, pad bands")] = None,
        retarget: Annotated[bool | None, Form(
            description="retarget the motion onto the photo's person (their shape, placement, camera); default: the "
            "server's defaults.retarget; false: drive the motion as it is")] = None,
        lead_in: Annotated[int | None, Form(
            description="retargeting: frames that blend from the photo's pose into the motion's first pose "
            "(default: the server's defaults.lead_in)")] = None,
        idempotency_key: Annotated[
            str | None, Header(alias="Idempotency-Key", max_length=MAX_IDEMPOTENCY_KEY,
                               description="a retried POST with the same key returns the same job")
        ] = None,
    ) -> JobView:
        """Submit a video job: 202 with the job; poll GET /v1/videos/{id} (or long-poll with ?wait_s=), then
        fetch /content."""

        async def read(upload: UploadFile | None) -> bytes | None:
            return None if upload is None else await upload.read()

        fields = {
            "prompt": prompt, "negative_prompt": negative_prompt, "num_frames": num_frames, "steps": steps,
            "guidance": guidance, "gamma": gamma, "seed": seed, "articulated_noise": articulated_noise,
            "backbone": backbone, "fit": fit, "background": background, "retarget": retarget, "lead_in": lead_in,
        }
        check_form(await request.form(), {*fields, *UPLOAD_FIELDS}, limits)  # FastAPI's parse, cached
        upload = Upload(await image.read(), await read(motion), motion_json, await read(pose_video), fields,
                        await read(mask))
        record, replayed = await service.submit(client, upload, idempotency_key)
        response.headers["Location"] = str(request.url_for("get_video", job_id=record.id))
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return JobView.of(record)

    @app.get("/v1/videos/{job_id}", response_model=JobView, responses={401: {}, 404: {}, 503: {}})
    async def get_video(
        client: Client,
        job_id: JobId,
        wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="long poll: answer once the job has "
                                       "finished or after this many seconds")] = 0.0,
    ) -> JobView:
        """The job's status (queued, running, succeeded, failed, cancelled), progress and error; 503 with
        Retry-After when this replica already holds its share of long polls."""
        return JobView.of(await service.get(client, job_id, wait_s))

    @app.get(
        "/v1/videos/{job_id}/content", response_class=Response,
        responses={200: {"content": {"video/mp4": {}}}, 401: {}, 404: {}, 409: {}},
    )
    async def get_video_content(client: Client, job_id: JobId) -> Response:
        """The MP4 of a succeeded job (409 until then)."""
        video = await service.content(client, job_id)
        return Response(video, media_type="video/mp4",
                        headers={"Content-Disposition": f'attachment; filename="{job_id}.mp4"'})

    @app.delete("/v1/videos/{job_id}", status_code=202, response_model=JobView, responses={401: {}, 404: {}, 409: {}})
    async def cancel_video(client: Client, job_id: JobId) -> JobView:
        """Cancel a job: a queued one at once, a running one at its next denoising step."""
        return JobView.of(await service.cancel(client, job_id))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {}})
    async def readyz() -> JSONResponse:
        """Readiness: job storage answered recently."""
        ready = service.ready()
        return JSONResponse({"status": "ready" if ready else "not ready"}, 200 if ready else 503)

    return app
