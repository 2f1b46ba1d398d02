"""Runners of built artifacts on their inference engines (ONNX Runtime, OpenVINO): what passes
check parity with, targets gate with, and the bundle runtime configures. Each module imports its
engine lazily; none imports torch."""
