"""Runners of built artifacts on their inference engines (ONNX Runtime, OpenVINO): what passes
check parity with, targets gate with, and the bundle runtime configures. Each module imports its
engine lazily; none imports torch, except ``distributed`` (torch.distributed for launches by
torchrun or accelerate launch, imported inside its functions)."""
