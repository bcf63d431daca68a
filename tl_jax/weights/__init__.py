"""Weight conversion (torchvision, Keras) and the converted-weights store."""
