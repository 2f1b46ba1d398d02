"""``from mcompress.runtime import load``: the torch-free bundle runtime, kept at its documented
import path. The code lives in ``mcompress.bundle.runtime``."""

from mcompress.bundle.runtime import *  # noqa: F401,F403
from mcompress.bundle.runtime import MAX_MEMBERS, BundleError, load, read_bundle  # noqa: F401
