"""Training: phase 1 (each network alone) and phase 2 (joint, iterative setting)."""
