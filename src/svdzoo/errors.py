"""User-facing errors: the CLI prints these as one clear line instead of a stack trace."""

from __future__ import annotations


class SvdzooError(Exception):
    """Base for every error caused by input (config, model, corpus, cache)."""


class ConfigError(SvdzooError, ValueError):
    pass


class CorpusError(SvdzooError, ValueError):
    pass


class ModelError(SvdzooError, ValueError):
    pass


class CacheError(SvdzooError, ValueError):
    pass


class OutputError(SvdzooError):
    """An output path that cannot or must not be written (foreign contents, an input, no space)."""


class FetchError(SvdzooError, RuntimeError):
    """A download or an integrity check of a packaged pretrained model failed."""
