"""Three-stage LoRA training of the PiTe model on DeepSpeed."""
