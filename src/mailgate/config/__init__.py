"""Typed configuration, declared once: schema, units, loading and the generated reference."""

from mailgate.config.load import load_config, parse_config
from mailgate.config.schema import Config

__all__ = ["Config", "load_config", "parse_config"]
