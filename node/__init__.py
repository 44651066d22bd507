"""edgefleet node: a quantized small language model behind gRPC."""
