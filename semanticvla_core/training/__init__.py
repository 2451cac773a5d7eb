"""Training stages of SemanticVLA: ``common`` (loop, checkpoints, DDP, logging) and one module per stage."""
