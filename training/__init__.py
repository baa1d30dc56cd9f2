"""Offline training: data, the 1-D CNNs, evaluation against the matched filter, ONNX export."""
