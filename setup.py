"""Packaging for keras_transformer (distribution name: keras-transformer-serving)."""

from setuptools import find_packages, setup

setup(
    name="keras-transformer-serving",
    version="0.1.0",
    description=(
        "Keras 3 layers from 'Attention Is All You Need': attention, "
        "encoder/decoder stacks, cached decoding, TensorFlow Serving export."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["keras_transformer", "keras_transformer.*", "serving", "serving.*"]),
    install_requires=[
        "tensorflow~=2.21.0",
        "keras>=3.10,<4",
        "tensorflow-text~=2.21.0",
        "tensorflow-serving-api~=2.21.0",
        "grpcio>=1.60",
        "numpy",
        "sacrebleu>=2.4",
        "sacremoses>=0.1",
        "tensorboard",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "pytest-timeout",
            "pytest-xdist",
            "matplotlib",
        ],
        "bench": [
            "keras-hub",
        ],
    },
)
