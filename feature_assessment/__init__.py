"""feature_assessment stage of x2dfd."""
