"""Real stand-ins for external services, served on loopback for integration tests."""
