"""Experiments over trained runs: the paper's ablation (Table 3), pictures of models and runs."""
