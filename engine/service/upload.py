"""A segmentation request's body: the image and the per-request options, checked before any
model sees them. Every problem is a ``RequestError`` carrying its HTTP status and a message
naming the problem; nothing in a request names a path on the server."""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError
from starlette.requests import Request

from ..config import ABLATION_SWITCHES, REQUEST_OPTIONS
from ..io import LoadedImage, from_pil


class RequestError(Exception):
    """A bad request: ``status`` (400, 413, 415, 422) and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 40_000_000  # 40 MP: checked from the header, before the pixels are decoded


def decode_image(data: bytes, limits: Limits, working: dict[str, Any]) -> LoadedImage:
    """An uploaded image as ``read_image`` would load the same file: RGB, working size
    (``working``: max_side, min_side, max_aspect). 400 empty / not an image / truncated;
    413 over ``max_pixels`` (read from the header, so a decompression bomb is never decoded)."""
    if not data:
        raise RequestError(400, "empty image: the request carried no image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > limits.max_pixels:
                    raise RequestError(413, f"image is {w}x{h} = {w * h:,} pixels, over the {limits.max_pixels:,}-pixel limit")
                if w < 1 or h < 1:
                    raise RequestError(400, f"image has no pixels ({w}x{h})")
                im.load()  # decode now: a truncated file fails here, not in the engine's thread
                return from_pil(im, source="<upload>", **working)
    except RequestError:
        raise
    except Image.DecompressionBombError as err:
        raise RequestError(
            413, f"image header claims more pixels than the {limits.max_pixels:,}-pixel limit (a decompression bomb?): {err}"
        ) from None
    except UnidentifiedImageError:
        raise RequestError(400, "not an image: no decoder recognises the uploaded bytes") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise RequestError(400, f"cannot decode image: {err}") from None


def _ablation(value: Any) -> dict[str, bool]:
    """``{"pnm": false}`` (JSON) or ``"pnm=off,hcg=on"`` (a form field) -> {switch: bool}."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return value  # switch names and booleans are checked by request_config
    if not isinstance(value, str):
        raise RequestError(422, f"ablation must be an object or 'switch=on|off,...', got {value!r}")
    out: dict[str, bool] = {}
    for item in value.split(","):
        name, _, state = item.partition("=")
        flag = {"on": True, "true": True, "off": False, "false": False}.get(state.strip().lower())
        if name.strip() not in ABLATION_SWITCHES or flag is None:
            raise RequestError(422, f"ablation {item.strip()!r}: expected one of {', '.join(ABLATION_SWITCHES)} = on|off")
        out[name.strip()] = flag
    return out


def _integer(name: str, value: Any) -> int | None:
    """A form's "3" or JSON's 3 -> 3; None when absent; 422 otherwise (JSON's true is no count)."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise RequestError(422, f"{name} must be an integer, got {value!r}")


def parse_options(fields: dict[str, Any]) -> dict[str, Any]:
    """The request options (``config.REQUEST_OPTIONS``) from form or JSON fields; 422 for an
    unknown field. Values are checked by ``config.request_config`` (also 422)."""
    unknown = sorted(set(fields) - set(REQUEST_OPTIONS) - {"image"})
    if unknown:
        raise RequestError(422, f"unknown field {unknown[0]!r}; allowed: image, {', '.join(REQUEST_OPTIONS)}")
    options: dict[str, Any] = {}
    for key in ("task", "preset"):
        if fields.get(key) is not None:
            if not isinstance(fields[key], str):
                raise RequestError(422, f"{key} must be a string, got {fields[key]!r}")
            options[key] = fields[key]
    for key in ("iterations", "seed"):
        value = _integer(key, fields.get(key))
        if value is not None:
            options[key] = value
    ablation = _ablation(fields.get("ablation"))
    if ablation:
        options["ablation"] = ablation
    return options


def parse_json(body: bytes) -> tuple[bytes, dict[str, Any]]:
    """``{"image": "<base64>", "task": ..., ...}`` -> (image bytes, options)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(400, f"body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise RequestError(422, f"JSON body must be an object, got {type(data).__name__}")
    if not isinstance(data.get("image"), str):
        raise RequestError(422, 'JSON body needs "image": the image file\'s bytes in base64')
    try:
        image = base64.b64decode(data["image"], validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(400, f'"image" is not valid base64: {err}') from None
    return image, parse_options(data)


def _replay_body(body: bytes) -> Any:
    """An ASGI ``receive`` handing over ``body`` (the request's bytes, already read) as the
    whole request, then a disconnect: a ``Request`` built on it parses its form from them."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


async def read_upload(request: Request, limits: Limits) -> tuple[bytes, dict[str, Any]]:
    """The image bytes and the options of a segmentation request, multipart (field ``image``) or
    JSON (``{"image": base64, ...}``), the body read in chunks up to ``limits.max_body_bytes``.
    415 another content type, 413 too large, 400 empty or malformed, 422 a bad field."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("multipart/form-data", "application/json"):
        raise RequestError(
            415,
            f"content type {ctype or '(none)'!r}: send multipart/form-data (field image) "
            'or application/json ({"image": base64})',
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise RequestError(413, f"body of {int(declared):,} bytes is over the {limits.max_body_bytes:,}-byte limit")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise RequestError(413, f"body is over the {limits.max_body_bytes:,}-byte limit")
    if not body:
        raise RequestError(400, "empty body: send the image")
    if ctype == "application/json":
        return parse_json(body)
    try:  # the client's stream is spent: a request whose receive replays the bytes read
        form = await Request(request.scope, _replay_body(body)).form()
    except Exception as err:  # python-multipart's parse errors have no common base class
        raise RequestError(400, f"malformed multipart body: {err}") from None
    fields = {k: v for k, v in form.multi_items()}
    upload = fields.pop("image", None)
    if upload is None or isinstance(upload, str):
        raise RequestError(422, "multipart body needs the image file in field 'image'")
    files = [k for k, v in fields.items() if not isinstance(v, str)]
    if files:
        raise RequestError(422, f"field {files[0]!r} must be text, not a file")
    return await upload.read(), parse_options(fields)
