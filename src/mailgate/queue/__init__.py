"""queue: the durable store between receivers and interchange threads."""
