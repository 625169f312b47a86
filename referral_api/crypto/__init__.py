"""Field-level encryption: key providers, envelope encryption, blind indexes."""
