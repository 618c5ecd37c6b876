"""Data fixtures (owned by the simulate/data module): small real BTK datasets."""
