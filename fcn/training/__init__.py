"""What only training uses: the LightningModule and its loss (``module``), the validation
metrics (``metrics``), optimisers and schedules (``optim``), our callbacks (``callbacks``),
wandb and the other loggers (``tracking``), the atomic checkpoint writer (``checkpoint_io``) and
the end-of-run report (``summary``)."""
