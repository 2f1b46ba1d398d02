"""The built-in examples: their corpora (read from PyPI data packages) and fine-tuning."""
