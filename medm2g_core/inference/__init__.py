"""Per-item inference below every driver: pre/post-processing, translate, generate, the MedM2G facade."""
