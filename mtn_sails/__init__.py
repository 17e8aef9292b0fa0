"""MTN Sails: continuous fine-tuning of small causal language models, exported to ONNX."""
__version__ = "0.1.0"
