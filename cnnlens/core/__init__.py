"""The algorithms, in NumPy only: no torch, onnx or onnxruntime is ever imported here."""
