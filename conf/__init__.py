"""fcn's Hydra configs, installed as the package data fcn.conf (config_path="pkg://fcn.conf").

Hydra imports this package to read the configs, so the resolver they use for run folders
(``${fcn_run_name:...}``: a SLURM job's id, else the launch time) is registered here, for every
command and any composition of these configs; ``fcn`` itself stays free of Hydra and OmegaConf.
"""

import fcn.run_folder  # noqa: F401  (registers the fcn_run_name resolver)
