"""SemanticVLA models: the latent action tokenizer (``latent_tokenizer``, ``vq``), the flow-matching
action decoder (``flow_decoder``) and the VLM / policy (added by their modules)."""
