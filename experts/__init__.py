"""experts stage of x2dfd."""
