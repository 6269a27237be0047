"""The embedded Triton server: the real tritonserver binary from the nvidia-pytriton wheel."""
