"""Running a saved model: the model file, its metadata, classifiers (Keras, ONNX) and predict.

Nothing here imports TensorFlow or Keras at module load; the .onnx path never does."""
