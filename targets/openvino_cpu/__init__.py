"""OpenVINO CPU target: the exported ONNX lowered to OpenVINO IR, INT8 through NNCF, run by the
OpenVINO CPU plugin. openvino and nncf are optional (``mcompress[openvino]``), imported only when
a build or a run needs them."""
