"""The runtime: ONNX export with its parity check, the onnxruntime and torch decoders behind one decode loop,
`generate`, and the offline web page. Never imports training."""
