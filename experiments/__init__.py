"""The named experiments, installed as fcn.conf.experiment: Hydra's `experiment` group."""
