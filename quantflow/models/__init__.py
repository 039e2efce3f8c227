"""Models stage (asset groups ``ml`` and ``dl``): scikit-learn and PyTorch models trained walk-forward on
``ft_features`` + ``cdm_labels``, storing only out-of-sample predictions (``pred_<model>``)."""
