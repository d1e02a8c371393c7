"""A segmentation request's body: the image and the per-request options, checked before any
model sees them. Every problem is a ``RequestError`` carrying its HTTP status and a message
naming the problem; nothing in a request names a path on the server.

What one request may cost is bounded here, for every route: the body's size and the time it
may take to arrive (``read_body``), the image's pixels (``decode_image``), and the options'
iterations, task length and seed (``check_request_limits``, which ``parse_options`` calls)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import warnings
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError
from starlette.requests import ClientDisconnect, Request

from ..config import ABLATION_SWITCHES, PRESETS, REQUEST_OPTIONS, SEED_MAGNITUDE, largest_preset_iterations
from ..io import LoadedImage, from_pil


class RequestError(Exception):
    """A bad request: ``status`` (400, 408, 413, 415, 422) and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Limits:
    """What one request may cost: body bytes, image pixels, iterations (``--max-iterations``),
    task characters, and seconds for its body to arrive (``--upload-timeout``; the server gives
    the headers as long again)."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 40_000_000  # 40 MP: checked from the header, before the pixels are decoded
    max_iterations: int = field(default_factory=largest_preset_iterations)
    max_task_chars: int = 200  # a task is a short noun phrase; 100k characters took 80x as long
    upload_timeout_s: float = 30.0


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
        raise RequestError(422, f"ablation must be an object or 'switch=on|off,...', got {_shown(value)}")
    out: dict[str, bool] = {}
    for item in value.split(","):
        name, _, state = item.partition("=")
        flag = {"on": True, "true": True, "off": False, "false": False}.get(state.strip().lower())
        if name.strip() not in ABLATION_SWITCHES or flag is None:
            raise RequestError(422, f"ablation {_shown(item.strip())}: expected one of {', '.join(ABLATION_SWITCHES)} = on|off")
        out[name.strip()] = flag
    return out


def _shown(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error message never echoes a huge value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _integer(name: str, value: Any) -> int | None:
    """A form's "3" or JSON's 3 -> 3; None when absent; 422 otherwise (JSON's true is no count)."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:  # not a number, or over Python's 4300-digit conversion limit
            pass
    raise RequestError(422, f"{name} must be an integer, got {_shown(value)}")


def check_request_limits(options: dict[str, Any], limits: Limits) -> None:
    """422 when a request's options would cost more than this server allows: more iterations
    than ``limits.max_iterations`` (asked for, or run by the preset asked for), a task longer than
    ``limits.max_task_chars``, a seed beyond +-``SEED_MAGNITUDE``. Every route that takes
    options calls it (``parse_options`` does); the values' other checks are ``request_config``'s."""
    iterations, preset = options.get("iterations"), options.get("preset")
    if iterations is not None and iterations > limits.max_iterations:
        raise RequestError(
            422, f"iterations {iterations} is over this server's limit of {limits.max_iterations} (--max-iterations)"
        )
    runs = PRESETS[preset].fields.get("iterations", 0) if iterations is None and preset in PRESETS else 0
    if runs > limits.max_iterations:
        raise RequestError(
            422,
            f"preset {preset!r} runs {runs} iterations, over this server's limit of {limits.max_iterations} (--max-iterations)",
        )
    task = options.get("task")
    if isinstance(task, str) and len(task) > limits.max_task_chars:
        raise RequestError(422, f"task of {len(task):,} characters is over this server's limit of {limits.max_task_chars}")
    seed = options.get("seed")
    if seed is not None and not -SEED_MAGNITUDE <= seed <= SEED_MAGNITUDE:
        raise RequestError(422, f"seed must be between {-SEED_MAGNITUDE} and {SEED_MAGNITUDE}, got {_shown(seed)}")


def parse_options(fields: dict[str, Any], limits: Limits | None = None) -> dict[str, Any]:
    """The request options (``config.REQUEST_OPTIONS``) from form or JSON fields; 422 for an
    unknown field or one over ``limits`` (``check_request_limits``; default: ``Limits()``).
    Values are checked by ``config.request_config`` (also 422)."""
    unknown = sorted(set(fields) - set(REQUEST_OPTIONS) - {"image"})
    if unknown:
        raise RequestError(422, f"unknown field {_shown(unknown[0])}; allowed: image, {', '.join(REQUEST_OPTIONS)}")
    options: dict[str, Any] = {}
    for key in ("task", "preset"):
        if fields.get(key) is not None:
            if not isinstance(fields[key], str):
                raise RequestError(422, f"{key} must be a string, got {_shown(fields[key])}")
            options[key] = fields[key]
    for key in ("iterations", "seed"):
        value = _integer(key, fields.get(key))
        if value is not None:
            options[key] = value
    ablation = _ablation(fields.get("ablation"))
    if ablation:
        options["ablation"] = ablation
    check_request_limits(options, limits or Limits())
    return options


def parse_json(body: bytes, limits: Limits | None = None) -> tuple[bytes, dict[str, Any]]:
    """``{"image": "<base64>", "task": ..., ...}`` -> (image bytes, options)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as err:  # also a 5000-digit number, a 100000-deep nesting
        raise RequestError(400, f"body is not valid JSON: {_shown(str(err), 200)}") from None
    if not isinstance(data, dict):
        raise RequestError(422, f"JSON body must be an object, got {type(data).__name__}")
    if not isinstance(data.get("image"), str):
        raise RequestError(422, 'JSON body needs "image": the image file\'s bytes in base64')
    try:
        image = base64.b64decode(data["image"], validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(400, f'"image" is not valid base64: {err}') from None
    return image, parse_options(data, limits)


def _replay_body(body: bytes) -> Any:
    """An ASGI ``receive`` handing over ``body`` (the request's bytes, already read) as the
    whole request, then a disconnect: a ``Request`` built on it parses its form from them."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


async def read_body(request: Request, limits: Limits) -> bytes:
    """The request's body, read in chunks: 413 when the declared Content-Length or the bytes
    received pass ``limits.max_body_bytes``, 408 when it has not all arrived within
    ``limits.upload_timeout_s`` (a stalled or trickling client holds no slot longer)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and (len(declared) > 18 or int(declared) > limits.max_body_bytes):
        size = f"{int(declared):,}" if len(declared) <= 18 else declared[:18] + "..."  # no 5000-digit int()
        raise RequestError(413, f"body of {size} bytes is over the {limits.max_body_bytes:,}-byte limit")
    body = bytearray()
    try:
        async with asyncio.timeout(limits.upload_timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limits.max_body_bytes:
                    raise RequestError(413, f"body is over the {limits.max_body_bytes:,}-byte limit")
    except ClientDisconnect:  # nobody reads the answer; said for the log and the metrics
        raise RequestError(499, f"client disconnected after {len(body):,} bytes of its body") from None
    except TimeoutError:
        raise RequestError(
            408, f"body not received within {limits.upload_timeout_s:g} s ({len(body):,} bytes arrived; --upload-timeout)"
        ) from None
    return bytes(body)


async def read_upload(request: Request, limits: Limits) -> tuple[bytes, dict[str, Any]]:
    """The image bytes and the options of a segmentation request, multipart (field ``image``) or
    JSON (``{"image": base64, ...}``), the body read by ``read_body``, the options checked
    against ``limits``. 415 another content type, 413 too large, 408 too slow, 400 empty or
    malformed, 422 a bad field or one over the limits."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("multipart/form-data", "application/json"):
        raise RequestError(
            415,
            f"content type {ctype or '(none)'!r}: send multipart/form-data (field image) "
            'or application/json ({"image": base64})',
        )
    body = await read_body(request, limits)
    if not body:
        raise RequestError(400, "empty body: send the image")
    if ctype == "application/json":
        return parse_json(body, limits)
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
    return await upload.read(), parse_options(fields, limits)
