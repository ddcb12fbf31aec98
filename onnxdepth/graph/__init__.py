"""The graph layer: loading, constants, lifting ONNX nodes into the thesis's node classes, channels."""
