"""Export torchvision ResNet-18 to ONNX, verify it against PyTorch, fill the model repository."""
