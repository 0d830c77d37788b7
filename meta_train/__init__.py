"""The training layer's meta-training: estimators (PES, ES, truncated backprop), the outer loop, its job
runner and run folders, and the search over optimizer programs (`search/`)."""
