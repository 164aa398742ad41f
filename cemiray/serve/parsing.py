"""Request parsing of the serve app (serve): bodies, images and sampling options, checked.

JSON and multipart bodies, base64, image decoding, landmark alignment, identity embeddings and
the SamplingSpec of a generate request; each check answers 4xx with a message naming the field
or item.

(No `from __future__ import annotations` here: Serve ships the ingress to its replicas by value.)
"""

import asyncio
import base64
import binascii
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import numpy as np
from fastapi import Request
from pydantic import TypeAdapter, ValidationError

from cemiray.data.images import ImageDecodeError, decode_image, image_format, image_size
from cemiray.diffusion.sampling import SAMPLING_KEYS, SamplingSpec
from cemiray.serve.config import ServeConfig
from cemiray.serve.guard import APIError, quoted
from cemiray.serve.schemas import GenerateRequest, Landmarks


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def location(loc: tuple) -> str:
    """`images[0].landmarks`; a key the client chose is shown escaped and truncated."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        name = str(part)
        if not name.isidentifier() or len(name) > 32:
            name = quoted(name, 32)
        text += f".{name}" if text else name
    return text


def validation_error(exc: ValidationError, prefix: str = "") -> APIError:
    """A 422 listing where and what, never echoing the input (it may be huge or not JSON-able)."""
    errors = [
        {"loc": prefix + location(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    shown = "; ".join(f"{e['loc'] or '<body>'}: {e['msg']}" for e in errors[:5])
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return APIError(422, f"invalid request body: {shown}{more}", errors)


async def parse_json(request: Request, model: type) -> Any:
    """The body validated as `model`, off the event loop (a large body never stalls /healthz)."""
    if media_type(request) not in ("application/json", ""):
        raise APIError(415, f"content type {quoted(media_type(request))} is not supported here; "
                            "send application/json")
    body = await request.body()
    try:
        return await asyncio.to_thread(model.model_validate_json, body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def multipart_boundary(content_type: str) -> bytes:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary" and value.strip().strip('"'):
            return value.strip().strip('"').encode("latin-1", "replace")
    raise APIError(422, "multipart body: the Content-Type has no boundary")


def check_part_count(body: bytes, content_type: str, max_parts: int) -> None:
    """Refuse a multipart body with more than `max_parts` parts by counting its delimiters,
    before any part is parsed (one C-speed scan: a 16 MiB body takes milliseconds)."""
    parts = body.count(b"--" + multipart_boundary(content_type)) - 1
    if parts > max_parts:
        raise APIError(413, f"multipart body: {parts} parts; at most {max_parts} (images up to "
                            "max_images_per_request, plus one landmarks part)")


LANDMARK_LIST = TypeAdapter(list[Landmarks | None], config={"strict": True})


def parse_multipart(body: bytes, content_type: str) -> list[tuple[bytes, list | None]]:
    """(image bytes, landmarks) per file part named `images`; an optional `landmarks` part holds
    a JSON list with one entry (null or 5 points) per image."""
    header = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise APIError(422, "multipart body: no parts found (check the boundary)")
    images, landmarks_text = [], None
    for i, part in enumerate(message.iter_parts()):
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if name == "images":
            images.append(payload)
        elif name == "landmarks" and landmarks_text is None:
            landmarks_text = payload
        else:
            raise APIError(422, f"multipart part {i}: unexpected field {quoted(name)}; expected "
                                "'images' (files) and at most one 'landmarks'")
    if not images:
        raise APIError(422, "multipart body: no 'images' file part")
    landmarks: list = [None] * len(images)
    if landmarks_text is not None:
        try:
            landmarks = LANDMARK_LIST.validate_json(landmarks_text)
        except ValidationError as exc:
            raise validation_error(exc, prefix="landmarks") from None
        if len(landmarks) != len(images):
            raise APIError(422, f"landmarks: {len(landmarks)} entries for {len(images)} images")
    return list(zip(images, landmarks))


def decode_base64(data: str, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(422, f"{where}.data: not valid base64 ({exc})") from None


def check_pixel_budget(raws: list[bytes], budget: int) -> None:
    """Refuse a request whose images would decode to more than `budget` pixels in all, read from
    their headers before anything is decoded (bad headers are left to `load_image` to name)."""
    total = 0
    for raw in raws:
        if image_format(raw) in ("png", "jpeg"):
            try:
                height, width = image_size(raw)
            except ImageDecodeError:
                continue
            total += height * width
    if total > budget:
        raise APIError(413, f"the request's {len(raws)} images hold {total} pixels in all, over "
                            f"the decoded-pixel budget max_pixels_per_request={budget}")


def load_image(raw: bytes, where: str, landmarks: list | None, cfg: ServeConfig) -> np.ndarray:
    """Decoded uint8 RGB pixels, aligned when landmarks are given; the pixel count is read from
    the header and checked before any decoding."""
    if image_format(raw) not in ("png", "jpeg"):
        raise APIError(422, f"{where}: not a PNG or JPEG image")
    try:
        height, width = image_size(raw, where)
        if height * width > cfg.max_pixels_per_image:
            raise APIError(413, f"{where}: {width}x{height} = {height * width} pixels exceeds "
                                f"max_pixels_per_image={cfg.max_pixels_per_image}")
        pixels = decode_image(raw, where)
    except ImageDecodeError as exc:
        raise APIError(422, str(exc)) from None
    if landmarks is None:
        return pixels
    return align(pixels, np.asarray(landmarks, dtype=np.float64), where, cfg.align_size)


def align(pixels: np.ndarray, points: np.ndarray, where: str, size: int) -> np.ndarray:
    from cemiray.models.recognizer import align_face

    height, width = pixels.shape[:2]
    inside = (points >= 0).all() and (points[:, 0] <= width).all() and (
        points[:, 1] <= height).all()
    if not inside:
        raise APIError(422, f"{where}.landmarks: every point must lie inside the {width}x{height} "
                            "image")
    if np.ptp(points, axis=0).max() < 2.0:
        raise APIError(422, f"{where}.landmarks: the 5 points coincide; cannot align")
    try:
        return align_face(pixels, points.astype(np.float32), size)
    except Exception as exc:  # noqa: BLE001 - skimage/OpenCV raise assorted types here
        raise APIError(422, f"{where}.landmarks: cannot align ({type(exc).__name__}: {exc})")


def unit_embedding(values: list[float], dim: int) -> np.ndarray:
    if len(values) != dim:
        raise APIError(422, f"embedding: {len(values)} values; the recogniser's embeddings have "
                            f"{dim}")
    vector = np.asarray(values, dtype=np.float64)
    if not np.isfinite(vector).all():
        raise APIError(422, "embedding: holds NaN or infinity")
    scale = np.abs(vector).max()
    if scale == 0:
        raise APIError(422, "embedding: all zeros; an identity needs a non-zero vector")
    vector = vector / scale
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def sampling_spec(req: GenerateRequest, cfg: ServeConfig) -> SamplingSpec:
    """The request's sampling options as the spec the generator samples by (steps defaulted
    from the server config), held to the server's step and try limits."""
    options = req.model_dump(include=set(SAMPLING_KEYS))
    options["steps"] = req.steps or cfg.default_steps
    try:
        spec = SamplingSpec.model_validate(options)
    except ValidationError as exc:
        raise validation_error(exc) from None
    if spec.steps > cfg.max_steps:
        raise APIError(422, f"steps={spec.steps} exceeds max_steps={cfg.max_steps}")
    if spec.tries > cfg.max_tries:
        raise APIError(422, f"closed_loop.max_tries={spec.tries} exceeds "
                            f"max_tries={cfg.max_tries}")
    return spec


def check_work(spec: SamplingSpec, n: int, cfg: ServeConfig) -> None:
    """Refuse a generate call whose UNet work (images x steps x tries x passes) is over the
    limit."""
    steps, tries, passes = spec.steps, spec.tries, spec.unet_passes
    if n * steps * tries * passes > cfg.max_image_steps:
        raise APIError(422, f"{n} images x {steps} steps x {tries} tries x {passes} UNet "
                            f"passes = {n * steps * tries * passes} exceeds "
                            f"max_image_steps={cfg.max_image_steps}")
