"""TFLite conversion and metadata for mobile apps."""
