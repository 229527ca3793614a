"""gelu_ext's version, the one place it is written: pyproject.toml reads it at build time (setuptools' dynamic
version, parsed without importing the package) and gelu_ext.__version__ imports it."""

__version__ = "0.3.0"
