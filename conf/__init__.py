"""fcn's Hydra configs, installed as the package data fcn.conf (config_path="pkg://fcn.conf")."""
