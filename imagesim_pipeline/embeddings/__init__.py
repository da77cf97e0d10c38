"""Chip embeddings: every kept chip encoded by the published ONNX model, one GeoParquet per cell and model version."""
