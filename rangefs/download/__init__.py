"""rangefs get (placeholder until the module lands)."""
