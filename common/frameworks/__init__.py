"""Frameworks: the Backend contract the loop calls, and PyTorch's and TensorFlow's implementations of it."""
