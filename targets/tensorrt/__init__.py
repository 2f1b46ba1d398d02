"""NVIDIA TensorRT target: symmetric INT8 Q/DQ ONNX -> serialized TensorRT engine.

Works with data-centre ``tensorrt`` or TensorRT for RTX (``tensorrt_rtx``), whichever imports;
both are optional and imported only when a build or a run needs them.
"""
