"""tests/fuzz: property-based fuzzing of the input readers (see fuzz_support.py)."""
