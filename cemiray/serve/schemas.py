"""JSON bodies of the HTTP API, version 1 (serve).

Requests are strict (no type coercion, unknown keys rejected, NaN and infinities refused) and
carry only data: images, embeddings and numbers, never a file path or URL, so a request cannot
choose what the server loads. Their sampling options become a SamplingSpec in
cemiray.serve.parsing."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cemiray.diffusion.sampling import SCHEDULER_NAMES

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
# One image's variation request: attribute name → true/false (binary) or a number (continuous),
# checked against the generator's trained attributes and ranges by the server.
VariationRequest = dict[Annotated[str, Field(min_length=1, max_length=64)], bool | FiniteFloat]
Similarity = Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)]
Point = Annotated[list[FiniteFloat], Field(min_length=2, max_length=2)]
Landmarks = Annotated[
    list[Point],
    Field(min_length=5, max_length=5, description="5 points (x, y) in pixels: left eye, right "
          "eye, nose, left and right mouth corner, as insightface's detectors give them"),
]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ImageInput(Request):
    """One image: base64 of its PNG or JPEG bytes; with landmarks it is first aligned to the
    ArcFace template (insightface `norm_crop`)."""

    data: str = Field(min_length=1, description="base64 of the PNG or JPEG file")
    landmarks: Landmarks | None = None


class EmbedRequest(Request):
    images: list[ImageInput] = Field(min_length=1)


class VerifyRequest(Request):
    image_a: ImageInput
    image_b: ImageInput


class ClosedLoop(Request):
    """Re-draw an image (from a new seed) while its measured similarity is off the target by
    more than `tolerance`; keep the closest of at most `max_tries`."""

    tolerance: float = Field(0.05, ge=0.0, le=2.0, allow_inf_nan=False)
    max_tries: int = Field(4, ge=1, le=100)


class GenerateRequest(Request):
    """New images of one identity, given as an inquiry image or as an embedding (exactly one),
    `images_per_m` images for each target similarity m; image k is drawn from seed + k."""

    image: ImageInput | None = None
    embedding: list[FiniteFloat] | None = Field(
        None, min_length=1, description="identity embedding; normalised by the server")
    m: list[Similarity] = Field(min_length=1, description="target similarities in [-1, 1]")
    images_per_m: int = Field(1, ge=1, le=1024)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    steps: int | None = Field(None, ge=1, le=1000, description="None: the server's default")
    scheduler: Literal[SCHEDULER_NAMES] | None = Field(  # type: ignore[valid-type]
        None, description="None: the sampler stored with the generator")
    closed_loop: ClosedLoop | None = None
    guidance_scale: float = Field(1.0, ge=0.0, le=20.0, allow_inf_nan=False,
                                  description="similarity guidance (1: none; otherwise the UNet "
                                              "runs twice a step)")
    guidance_m: Similarity = Field(0.0, description="reference m of the guidance")
    variation: list[VariationRequest | None] | None = Field(
        None, min_length=1, max_length=64, description="variation plan: each entry (e.g. "
        "{\"glasses\": true, \"yaw\": 20.0}; null or {} = nothing requested) is made for every "
        "m and image; needs a variation-conditioned generator (GET /v1/models lists its "
        "attributes and ranges)")

    @model_validator(mode="after")
    def _one_identity(self) -> GenerateRequest:
        if (self.image is None) == (self.embedding is None):
            raise ValueError("give the identity as exactly one of 'image' or 'embedding'")
        return self


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    dim: int
    recognizer_hash: str


class VerifyResponse(BaseModel):
    similarity: float
    threshold: float
    same_identity: bool
    recognizer_hash: str


class GeneratedImage(BaseModel):
    m: float
    seed: int = Field(description="seed of the kept draw")
    png_base64: str
    similarity: float = Field(description="cosine to the identity, measured by the recogniser")
    tries: int
    within_tolerance: bool | None = Field(None, description="closed loop only")
    variation: dict | None = Field(None, description="the variation requested for this image")
    variation_measured: dict | None = Field(
        None, description="what the server's independent attribute estimator reads in the "
        "image (only when the server has one)")


class GenerateResponse(BaseModel):
    images: list[GeneratedImage]
    steps: int
    scheduler: str | None
    generator_hash: str
    recognizer_hash: str


class ModelInfo(BaseModel):
    uri: str
    content_hash: str
    details: dict


class ModelsResponse(BaseModel):
    recognizer: ModelInfo
    generator: ModelInfo | None
    limits: dict
    verify_threshold: float


class HealthResponse(BaseModel):
    status: str
    models: dict[str, str]


class ErrorResponse(BaseModel):
    detail: str
    errors: list[dict] | None = None


ERROR_RESPONSES: dict = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (401, "missing or wrong X-API-Key"),
        (413, "body, image count or image size over a limit"),
        (415, "content type other than JSON (or multipart for /v1/embed)"),
        (422, "invalid body, undecodable image or a request over a work limit"),
    )
}

REQUEST_MODELS = (EmbedRequest, VerifyRequest, GenerateRequest)

EMBED_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["images"],
    "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"},
                   "description": "one file part per image (PNG or JPEG)"},
        "landmarks": {"type": "string", "description": "optional JSON list, one entry per "
                      "image: null or 5 [x, y] points"},
    },
}
