"""Model code: input pipeline, model registry, Trainer entry point, export."""
