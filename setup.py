import os

from setuptools import Extension, find_packages, setup


def packing_extension() -> dict:
    """setup() arguments for the packing kernels (csrc/packing.cpp -> megaomni._packing_ext).

    Plain C++ (no torch or pybind11 headers, nothing imported here at build time), built as an
    ordinary extension module in seconds; megaomni.data.packing opens it with ctypes. Optional: a
    failed compile (no C++ compiler, say) warns and installs without it, and MEGAOMNI_NO_EXT=1
    skips it; megaomni.data.packing then runs its Python reference, with the same results."""
    if os.environ.get("MEGAOMNI_NO_EXT") == "1":
        return {}
    extension = Extension("megaomni._packing_ext", ["csrc/packing.cpp"], language="c++", optional=True,
                          extra_compile_args=["-O3", "-std=c++17", "-pthread"], extra_link_args=["-pthread"])
    return {"ext_modules": [extension]}


setup(
    name="megaomni",
    version="0.1.0",
    description="Training engine for omni-modal LLMs (vision + audio encoders + LLM) on megatron-core",
    packages=find_packages(include=["megaomni", "megaomni.*"]),
    python_requires=">=3.11",
    install_requires=[
        "torch>=2.6",
        "megatron-core>=0.16.1,<0.20",
        "psutil",
        "numpy",
        "sentencepiece",
        "pyyaml",
        "pillow",
    ],
    extras_require={
        # Picked up when importable, never required: every path has a torch fallback.
        "te": ["transformer_engine[pytorch]"],
        "flash": ["flash-attn"],
        "apex": ["apex"],
        "dali": ["nvidia-dali-cuda120"],
        # Hugging Face models in and out (megaomni.checkpoint.hf, tools/convert_hf.py).
        "hf": ["transformers>=5", "safetensors", "tokenizers"],
        # data.path on other file systems: fsspec and the protocol's package (s3fs, gcsfs, ...).
        "remote": ["fsspec"],
        "test": ["pytest", "transformers>=5", "safetensors", "tokenizers", "fsspec"],
    },
    **packing_extension(),
)
