"""int-engine: a high-throughput inference engine for INT (task-generic promptable segmentation).

The import name is ``int_engine``: ``engine/`` is the package, ``kernels/`` and ``bench/``
are its subpackages ``int_engine.kernels`` and ``int_engine.bench``.
"""

from setuptools import setup

PACKAGES = {
    "int_engine": "engine",
    "int_engine.models": "engine/models",
    "int_engine.backends": "engine/backends",
    "int_engine.testing": "engine/testing",
    "int_engine.export": "engine/export",
    "int_engine.kernels": "kernels",
    "int_engine.bench": "bench",
}

setup(
    name="int-engine",
    version="0.1.0",
    description="Inference engine for INT: instance-specific negative mining for task-generic promptable segmentation",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
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
    ],
    extras_require={
        # ONNX export and the onnxruntime backends, CPU build (the GPU build is in [gpu])
        "onnx": ["onnx>=1.16", "onnxruntime>=1.17"],
        # GPU machines: onnxruntime's CUDA/TensorRT providers and xformers attention for the UNet
        "gpu": ["onnx>=1.16", "onnxruntime-gpu>=1.17", "xformers>=0.0.28"],
        # TensorRT engines built from the ONNX graphs (int-engine export --format tensorrt)
        "trt": ["tensorrt>=10.0"],
        "dev": ["pytest>=8.0", "pysodmetrics>=1.4", "onnx>=1.16", "onnxruntime>=1.17"],
    },
    entry_points={"console_scripts": ["int-engine = int_engine.cli:main"]},
)
