"""unweave: reverse-engineer trained networks into descriptions that can be checked."""

from unweave.sites import SiteError, capture, list_sites, patch

__version__ = "0.1.0"
__all__ = ["SiteError", "capture", "list_sites", "patch", "__version__"]
