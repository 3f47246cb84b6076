"""RolloutService: artifact versions and progressive delivery."""
