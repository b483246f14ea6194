"""Export a trained model as a TensorFlow Serving SavedModel (core ops only)."""
