"""Take a model out: merge an adapter, write GGUF (vocabulary, quantization, verification), a Modelfile."""
