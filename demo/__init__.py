"""demo stage of x2dfd."""
