"""nvp export side: fit INRs, select layer pairs, train adapters, export ONNX. Needs torch."""
