"""Saying, once per process, which stand-in is in use (never silently).

Where a standard loss or metric needs weights that cannot be downloaded here (LPIPS' ImageNet VGG16,
FID's Inception-v3), the course uses a labelled substitute. :func:`announce_once` is how every such
choice is reported: a ``warnings.warn`` for a substitute (so it shows in notebooks and test logs), a
plain ``print`` for the real thing, and a log record either way.
"""

from __future__ import annotations

import logging
import warnings


def announce_once(seen: set[str], key: str, msg: str, substitute: bool, category: type[Warning],
                  logger: logging.Logger, stacklevel: int = 4) -> None:
    """Report ``msg`` unless ``key`` is already in ``seen`` (then add it).

    ``substitute``: warn with ``category`` (``stacklevel`` counted from the caller's caller, so the
    warning points at user code); otherwise print. Always ``logger.info(msg)``.
    """
    if key in seen:
        return
    seen.add(key)
    if substitute:
        warnings.warn(msg, category, stacklevel=stacklevel)
    else:
        print(msg)
    logger.info(msg)
