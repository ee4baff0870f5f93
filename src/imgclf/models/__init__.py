"""Models: the registry (create_model, list_models; no Keras at import) and one module per family."""
