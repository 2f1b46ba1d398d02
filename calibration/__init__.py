"""Evaluation and calibration data: loading labelled text, tokenizing it, hashing it."""
