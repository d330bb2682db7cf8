"""Cellar: one import package. This folder is the core (config, protocol, errors, store,
versions, gguf, hashing, ...) that every part may import; the parts themselves (`cellar.cli`,
`cellar.server`, `cellar.engines`, `cellar.convert`, `cellar.quantize`, `cellar.finetune`,
`cellar.benchmarks`, `cellar.bundle`) are the repository's top-level folders, linked in here.
The core imports none of them (pyproject.toml's import-linter contracts)."""

__version__ = "0.1.0"
