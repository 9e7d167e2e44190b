"""Config: every flag's one declaration (a config field), the core's component configs and the YAML file.

A recipe needs ``from common.config import core_parser, parse_config`` (and ``ConfigError``,
``TrainConfig`` when it checks or builds a config itself).
"""

from common.config.core import TrainConfig, core_parser, parse_config
from common.config.flags import ConfigError

__all__ = ["ConfigError", "TrainConfig", "core_parser", "parse_config"]
