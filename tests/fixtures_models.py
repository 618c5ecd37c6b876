"""Model fixtures (owned by the models/training module): tiny trained runs."""
