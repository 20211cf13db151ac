"""The training engine: the contract strategies implement, one loop, its state and guards."""
