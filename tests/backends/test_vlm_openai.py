"""The openai VLM backend (engine/backends/vlm_openai.py) against the in-process vLLM backend
(vlm_vllm.py) on the tiny zoo's LLaVA served by a real vLLM OpenAI-compatible server (the CPU build
here), started by this module on loopback with the in-process test's engine settings and stopped at
its end: the same scores, the same answers. The HTTP side (the concurrency bound, retries,
timeouts, errors, the API key, the prompt-id check) is tested against httpx's MockTransport,
with no server.

vLLM is an optional extra; the tests that start a server are skipped without it. One server
serves the module: starting it is the cost (~1 min on 2 cores, more with cold vLLM caches).
"""

from __future__ import annotations

import json
import secrets
import threading
import time

import httpx
import numpy as np
import pytest
from vllm_helpers import PROMPT_A, check_bad_requests, needs_vllm, vllm_environment

from int_engine.backends.vllm_http import ServerClient, ServerError, api_root, retry_wait
from int_engine.backends.vlm_openai import SERVER_CHAT_TEMPLATE, OpenAILlavaVLM, collapse_runs
from int_engine.config import ModelsConfig, RoleConfig
from int_engine.errors import ConfigError, ModelLoadError
from int_engine.models.load import check_options, load_role
from int_engine.protocols import VLM

PROMPT_B = "This image pertains to the camouflaged animal detection task, output the bounding box of the camouflaged animal."
KEY_ENV = "INT_ENGINE_TEST_VLM_KEY"
SERVED = "tiny-llava"


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(56, 56), (80, 120), (200, 90)]]


# ---- against a real vLLM server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_env(tmp_path_factory):
    """vLLM's caches under the engine's cache root (they outlive the session), no usage stats
    (``vllm_helpers.vllm_environment``)."""
    with vllm_environment(tmp_path_factory.mktemp("vllm_rpc")):
        yield


@pytest.fixture(scope="module")
def server(tiny_zoo, vllm_env):
    """(the server, its API key): `vllm serve` of the tiny LLaVA on 127.0.0.1, a free port."""
    from int_engine.bench.vlm_server import TINY_ENGINE, VLLMServer

    key = secrets.token_hex(16)
    with VLLMServer(tiny_zoo / "vlm", TINY_ENGINE, served_name=SERVED, api_key=key, ready_timeout_s=600) as srv:
        yield srv, key


@pytest.fixture(scope="module")
def remote(server, tiny_zoo) -> OpenAILlavaVLM:
    """The backend loaded as the engine loads a role: through the config and its option check."""
    srv, key = server
    cfg = ModelsConfig()
    # the URL without /v1 (its API root is found), the key by its variable's name only
    cfg.vlm = RoleConfig(
        "openai", path=str(tiny_zoo / "vlm"), options={"base_url": srv.url, "api_key_env": KEY_ENV, "concurrency": 4}
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, key)
        vlm = load_role(cfg, "vlm")
    yield vlm
    vlm.close()


@pytest.fixture(scope="module")
def local(tiny_zoo, vllm_env):
    """The in-process vLLM backend on the same checkpoint, with the same engine settings."""
    from int_engine.backends.vlm_vllm import VLLMLlavaVLM
    from int_engine.bench.vlm_server import TINY_ENGINE

    vlm = VLLMLlavaVLM.load(tiny_zoo / "vlm", **TINY_ENGINE)
    yield vlm
    vlm.close()


@needs_vllm
def test_the_server_runs_on_loopback_with_the_in_process_settings(server, remote):
    srv, _ = server
    flags = srv.command
    assert flags[flags.index("--host") + 1] == "127.0.0.1"
    assert flags[flags.index("--chat-template") + 1] == SERVER_CHAT_TEMPLATE and "--api-key" not in flags
    for flag in ("--enforce-eager", "--enable-prefix-caching", "--kv-cache-memory-bytes", "--max-model-len"):
        assert flag in flags
    assert isinstance(remote, VLM)
    assert remote.model == SERVED and remote.client.root == srv.base_url
    assert remote.joiner == " "  # the tiny tokenizer is a Metaspace one, as LLaVA-1.5's


@needs_vllm
def test_score_equals_in_process_vllm(remote, local, images):
    imgs = images * 2
    prompts = [PROMPT_A, PROMPT_B, PROMPT_A, PROMPT_B, PROMPT_A, PROMPT_A]
    answers = ["frog", "[0.12, 0.30, 0.55, 0.91]", "the chameleon on a branch of the tree", "leaf", "moth", "sand"]
    expected = local.score(imgs, prompts, answers)
    sent, calls = remote.client.sent, remote.calls
    got = remote.score(imgs, prompts, answers)
    assert got.dtype == np.float32 and got.shape == (6,)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    print(f"openai vs in-process vLLM scores: largest difference {np.abs(got - expected).max():.2e}")
    assert np.ptp(got) > 0.1  # scores that differ, so the comparison means something
    assert remote.calls == calls + 1 and remote.client.sent == sent + 6  # one request per row
    assert remote.score([], [], []).shape == (0,) and remote.client.sent == sent + 6


@needs_vllm
def test_generate_equals_in_process_vllm(remote, local, images):
    imgs = images + images[:1]
    prompts = [PROMPT_A, PROMPT_B, PROMPT_A, PROMPT_B]
    got = remote.generate(imgs, prompts, max_new_tokens=8)
    assert got == local.generate(imgs, prompts, max_new_tokens=8)
    assert any(got) and len(set(got)) > 1
    seeds = [3, 4, 5, 6]
    sampled = remote.generate(imgs, prompts, 8, temperature=1.0, seeds=seeds)
    assert sampled == local.generate(imgs, prompts, 8, temperature=1.0, seeds=seeds)
    assert sampled != got and sampled[2:] == remote.generate(imgs[2:], prompts[2:], 8, temperature=1.0, seeds=seeds[2:])
    assert remote.generate([], [], 4) == []
    with pytest.raises(ValueError, match="one seed per prompt"):
        remote.generate(imgs, prompts, 8, temperature=1.0)


@needs_vllm
def test_bad_requests_raise_value_error(remote, images):
    check_bad_requests(remote, images)


@needs_vllm
def test_a_wrong_key_or_model_is_refused_at_load(server, tiny_zoo, monkeypatch):
    srv, key = server
    path = tiny_zoo / "vlm"
    monkeypatch.setenv(KEY_ENV, key + "x")
    with pytest.raises(ModelLoadError, match="401"):
        OpenAILlavaVLM.load(path, base_url=srv.base_url, api_key_env=KEY_ENV, retries=0)
    monkeypatch.setenv(KEY_ENV, key)
    with pytest.raises(ConfigError, match=f"does not serve 'llava-13b'; it serves \\['{SERVED}'\\]"):
        OpenAILlavaVLM.load(path, base_url=srv.base_url, api_key_env=KEY_ENV, model="llava-13b")
    with OpenAILlavaVLM.load(path, base_url=srv.base_url + "/", api_key_env=KEY_ENV, model=SERVED) as vlm:
        assert vlm.model == SERVED


@needs_vllm
def test_the_engine_segments_alike_with_the_vlm_in_process_or_served(remote, local, tiny_zoo):
    """The whole method, once with each VLM (the other roles shared): the same picks and masks."""
    from dataclasses import replace

    from int_engine.api import IntEngine
    from int_engine.bench.synthetic import make_scene
    from int_engine.config import EngineConfig

    cfg = ModelsConfig()
    models = load_models_but_vlm(cfg, tiny_zoo)
    image, _ = make_scene(3, 96, 128)
    results, sent = [], remote.client.sent
    for vlm in (local, remote):
        with IntEngine(EngineConfig(iterations=2), models=replace(models, vlm=vlm)) as engine:
            results.append(engine.segment(image))
    a, b = results
    assert remote.client.sent - sent > 10  # the served VLM did the VLM's work
    for x, y in zip(a.trace.iterations, b.trace.iterations, strict=True):
        assert (x.candidates, x.pick) == (y.candidates, y.pick)
        assert x.scores.keys() == y.scores.keys()
        np.testing.assert_allclose(list(x.scores.values()), list(y.scores.values()), atol=1e-4)
    np.testing.assert_array_equal(a.binary, b.binary)
    np.testing.assert_allclose(a.soft, b.soft, atol=1e-6)


def load_models_but_vlm(cfg: ModelsConfig, zoo):
    from int_engine.models.load import load_miner
    from int_engine.protocols import Models

    roles = {"inpainter": "inpaint", "detector": "detector", "segmenter": "segmenter", "clip": "clip"}
    return Models(vlm=None, **{field: load_role(cfg, role, zoo) for field, role in roles.items()}, miner=load_miner(cfg))


# ---- without a server --------------------------------------------------------------------------


class FakeServer:
    """A vLLM chat server in a MockTransport: the models list, and chat answers whose prompt ids
    are the backend's own with the image token expanded to 16 (or ``ids`` when set), prompt token
    i's log-prob ``-i / 100``, one new token; ``fail`` statuses answered first, in order."""

    def __init__(self, vlm_ids, delay_s: float = 0.0, fail: tuple = (), key: str | None = None) -> None:
        self.vlm_ids, self.delay_s, self.fail, self.key = vlm_ids, delay_s, list(fail), key
        self.ids: list[int] | None = None
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = self.most = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.key is not None and request.headers.get("authorization") != f"Bearer {self.key}":
            return httpx.Response(401, json={"error": {"message": "Unauthorized"}})
        with self.lock:
            failure = self.fail.pop(0) if self.fail else None
        if isinstance(failure, Exception):
            raise failure
        if failure is not None:
            return httpx.Response(failure, json={"error": {"message": f"busy {failure}"}}, headers={"Retry-After": "0"})
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": SERVED}]})
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        time.sleep(self.delay_s)
        body = json.loads(request.content)
        self.bodies.append(body)
        ids = self.ids or self.vlm_ids(body["messages"][0]["content"][1]["text"])
        with self.lock:
            self.in_flight -= 1
        logprobs = [None] + [{str(t): {"logprob": -i / 100, "rank": 1}} for i, t in enumerate(ids) if i]
        answer = {"prompt_token_ids": ids, "prompt_logprobs": logprobs, "choices": [{"token_ids": [2]}]}
        return httpx.Response(200, json=answer | {"usage": {"prompt_tokens": len(ids)}})


@pytest.fixture(scope="module")
def processor(tiny_zoo):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_zoo / "vlm")


def fake_backend(processor, key=None, client_key=None, concurrency=8, retries=2, **fake) -> tuple[OpenAILlavaVLM, FakeServer]:
    token = processor.image_token
    image_id = processor.tokenizer.convert_tokens_to_ids(token)

    def ids(sent_text: str) -> list[int]:
        row = processor.tokenizer(sent_text)["input_ids"]  # the server tokenises the text whole
        return [t for t in row for _ in range(16 if t == image_id else 1)]

    srv = FakeServer(ids, key=key, **fake)
    client_key = key if client_key is None else client_key
    client = ServerClient("http://vlm.test", client_key, concurrency, 30.0, retries, transport=httpx.MockTransport(srv))
    return OpenAILlavaVLM.open(client, processor, "llava_v1"), srv


def test_rows_go_out_at_most_concurrency_at_once_and_scores_are_answer_means(processor, images):
    vlm, srv = fake_backend(processor, concurrency=3, delay_s=0.05)
    answers = ["frog", "a green lizard", "owl", "moth"] * 3
    got = vlm.score(images[:1] * 12, [PROMPT_A] * 12, answers)
    assert srv.most == 3 and vlm.client.in_flight_max == 3 and len(srv.bodies) == 12
    for body in srv.bodies:
        assert body["prompt_logprobs"] == 0 and body["max_tokens"] == 1 and body["add_special_tokens"]
        assert body["model"] == SERVED and body["return_token_ids"] and body["temperature"] == 0
    # the fake's log-prob of token i is -i/100: the answer's are its last positions
    total = len(srv.vlm_ids(vlm.server_text(vlm.score_text(PROMPT_A, "frog"))))
    n = len(vlm.token_ids([vlm.score_text(PROMPT_A, "frog")])[0]) - len(vlm.token_ids([vlm.chat_text(PROMPT_A)])[0])
    assert got[0] == pytest.approx(-np.mean(range(total - n, total)) / 100, abs=1e-6)
    body = srv.bodies[0]["messages"][0]["content"]
    assert body[0]["image_url"]["url"].startswith("data:image/png;base64,") and body[1]["text"].count("<image> \n") == 1
    vlm.close()


def test_busy_answers_and_broken_connections_are_retried_then_reported(processor, images):
    vlm, srv = fake_backend(processor, retries=2)
    srv.fail = [503, httpx.ConnectError("refused")]
    assert vlm.generate(images[:1], [PROMPT_A], 4) == [""]  # the fake's one token is </s>
    assert vlm.client.sent == 1 + 3  # the models list, then two failed tries and the answer
    srv.fail = [429, 503, 502]
    with pytest.raises(
        ServerError, match=r"request 0 of 1: vlm: POST http://vlm.test/v1/chat/completions: 502 busy 502 \(tries: 3\)"
    ):
        vlm.generate(images[:1], [PROMPT_A], 4)
    srv.fail = [400]  # a refusal is not retried
    with pytest.raises(ServerError, match=r"400 busy 400 \(tries: 1\)"):
        vlm.generate(images[:1], [PROMPT_A], 4)
    srv.fail = [httpx.ReadTimeout("slow")] * 3
    with pytest.raises(ServerError, match=r"ReadTimeout: slow \(tries: 3\)"):
        vlm.score(images[:1], [PROMPT_A], ["frog"])
    assert retry_wait(0, None) == 0.5 and retry_wait(2, None) == 2.0 and retry_wait(0, "3") == 3.0
    assert retry_wait(0, "9999") == 30.0 and retry_wait(1, "Wed, 21 Oct 2015 07:28:00 GMT") == 1.0


def test_the_key_comes_from_the_named_variable_only(processor, tiny_zoo, monkeypatch):
    vlm, srv = fake_backend(processor, key="k3y")
    assert vlm.model == SERVED
    with pytest.raises(ModelLoadError, match="401 Unauthorized"):
        fake_backend(processor, key="k3y", client_key="other", retries=0)
    with pytest.raises(ConfigError, match="unknown option 'api_key' \\(did you mean 'api_key_env'\\?\\)"):
        check_options(_config(api_key="k3y"))
    check_options(_config(base_url="http://h:8000/v1", api_key_env=KEY_ENV, concurrency=4, timeout_s=30, retries=1))
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=f"api_key_env names '{KEY_ENV}', but that environment variable is not set"):
        OpenAILlavaVLM.load(tiny_zoo / "vlm", base_url="http://127.0.0.1:9", api_key_env=KEY_ENV)


def test_a_server_running_other_ids_is_an_error_naming_the_template(processor, images):
    vlm, srv = fake_backend(processor)
    srv.ids = processor.tokenizer(vlm.score_text(PROMPT_A, "frog"))["input_ids"]  # the server's own template's
    with pytest.raises(RuntimeError, match="other prompt ids than LLaVA's .*--chat-template-content-format string"):
        vlm.score(images[:1], [PROMPT_A], ["frog"])
    assert collapse_runs([1, 5, 5, 5, 2, 5], 5) == [1, 5, 2, 5]


def test_options_and_urls_are_checked_before_any_request(tiny_zoo, tmp_path):
    path = tiny_zoo / "vlm"
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="needs options.base_url"):
        OpenAILlavaVLM.load(path)
    with pytest.raises(ConfigError, match="concurrency must be >= 1"):
        OpenAILlavaVLM.load(path, base_url="http://127.0.0.1:9", concurrency=0)
    with pytest.raises(ConfigError, match="http\\(s\\) URL"):
        OpenAILlavaVLM.load(path, base_url="127.0.0.1:8000")
    with pytest.raises(ModelLoadError, match="the VLM server at http://127.0.0.1:9/v1 cannot be used: .*ConnectError"):
        OpenAILlavaVLM.load(path, base_url="http://127.0.0.1:9", retries=0)
    with pytest.raises(ModelLoadError, match="missing tokenizer.json"):
        OpenAILlavaVLM.load(tmp_path, base_url="http://127.0.0.1:9")
    assert api_root("http://h:8000") == "http://h:8000/v1" and api_root("https://gw/llava/v1/") == "https://gw/llava/v1"


def _config(**options) -> ModelsConfig:
    cfg = ModelsConfig()
    cfg.vlm = RoleConfig("openai", options=options)
    return cfg
