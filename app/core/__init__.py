"""The serving core: numpy and onnxruntime only. Training's evaluation imports it too."""
