from setuptools import find_packages, setup

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
        "test": ["pytest"],
    },
)
