"""Models: the registry (create_model, list_models) and the network families."""
