"""Runtimes for exported models: ONNX Runtime sessions and TensorRT engine builds."""
