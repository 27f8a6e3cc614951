import os
import shutil

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


def grouped_gemm_extension() -> dict:
    """setup() arguments for the MoE experts' cuBLAS grouped GEMM (csrc/grouped_gemm.cu ->
    megaomni._grouped_gemm_ext), built only where nvcc is and torch is a CUDA build; optional like
    the packing kernels. megaomni.ops.grouped_gemm uses torch._grouped_mm or its loop without it."""
    if os.environ.get("MEGAOMNI_NO_EXT") == "1" or not shutil.which("nvcc"):
        return {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    if torch.version.cuda is None:
        return {}
    extension = CUDAExtension("megaomni._grouped_gemm_ext", ["csrc/grouped_gemm.cu"], libraries=["cublas"],
                              optional=True, extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]})
    return {"ext_modules": [extension], "cmdclass": {"build_ext": BuildExtension}}


def extensions() -> dict:
    packing, grouped = packing_extension(), grouped_gemm_extension()
    return {**grouped, "ext_modules": packing.get("ext_modules", []) + grouped.get("ext_modules", [])}


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
    **extensions(),
)
