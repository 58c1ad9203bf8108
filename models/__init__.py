"""Shared by training and streaming: feature spec and scaling, model
architectures, the model bundle format and batched inference."""
