"""Custom TFX components of the skin-lesion pipeline."""
