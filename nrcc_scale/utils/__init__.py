"""Small shared helpers: atomic file writes, seeding and RNG state, device and precision choice."""
