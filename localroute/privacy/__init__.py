"""The privacy guarantee: detection, classification, the egress guard, redaction, and the audit log."""
