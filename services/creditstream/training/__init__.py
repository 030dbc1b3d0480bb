"""Model training: engineered features (with their ONNX converter), fit, export, model card."""
