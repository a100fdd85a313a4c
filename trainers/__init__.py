"""Training: credit assignment (pure functions), losses and training loops."""
