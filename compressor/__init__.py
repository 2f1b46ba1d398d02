"""mcompress: compress fine-tuned BERT-family checkpoints and build them for a deployment target."""

__version__ = "0.1.0"
