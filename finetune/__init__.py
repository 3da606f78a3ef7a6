"""finetune stage of x2dfd."""
