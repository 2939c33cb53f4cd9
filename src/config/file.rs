//! Serde mirror of the YAML file, `deny_unknown_fields` everywhere; no logic.
